"""What an incremental apply must do, worked out from files alone (no I/O here).

The files stay the truth: a full reload of them is what Asterisk must end up with. An
incremental round gets there by the smallest change instead:

- dialplan: our files are read (by `parse`) into (context, extension, priority) ->
  (application, data), plus includes; the difference between what is live (the files of the revision
  last verified live) and what is wanted becomes AMI operations. A context that appears
  in several files ([carrier-in], to which every PBX adds its numbers) is changed key by
  key; a context of one PBX that is gone is removed whole.
- PJSIP: objects only come from a reload of res_pjsip; what we work out is which
  endpoints a reload must bring (or take away), to check just those afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from provisioner.asterisk.parse import Context, Dialplan, sections


@dataclass(frozen=True)
class AddStep:
    context: str
    extension: str
    priority: str
    app: str
    data: str


@dataclass(frozen=True)
class RemoveStep:
    context: str
    extension: str
    priority: str


@dataclass(frozen=True)
class AddInclude:
    context: str
    included: str


@dataclass(frozen=True)
class RemoveInclude:
    context: str
    included: str


@dataclass(frozen=True)
class RemoveContext:
    context: str


Operation = AddStep | RemoveStep | AddInclude | RemoveInclude | RemoveContext


def dialplan_operations(
    before: Dialplan, after: Dialplan, shared: AbstractSet[str]
) -> list[Operation]:
    """From live `before` to wanted `after`. Additions come first and the shared entry
    contexts last among them (a number is routed only once its target contexts exist);
    removals come after, entry contexts first (nothing routes into a context that is
    going away)."""
    adds: list[Operation] = []
    removals: list[Operation] = []
    # Contexts in a stable order: own ones by name, then the shared entry contexts.
    order = sorted(set(before) | set(after), key=lambda c: (c in shared, c))
    for name in order:
        old, new = before.get(name, Context()), after.get(name)
        if new is None:
            if name in shared:
                removals += [RemoveStep(name, e, p) for e, p in sorted(old.steps)]
                removals += [RemoveInclude(name, i) for i in sorted(old.includes)]
            else:
                removals.append(RemoveContext(name))
            continue
        adds += [AddInclude(name, i) for i in sorted(new.includes - old.includes)]
        adds += [
            AddStep(name, e, p, *new.steps[(e, p)])
            for e, p in sorted(new.steps)
            if old.steps.get((e, p)) != new.steps[(e, p)]
        ]
        removals += [RemoveStep(name, e, p) for e, p in sorted(set(old.steps) - set(new.steps))]
        removals += [RemoveInclude(name, i) for i in sorted(old.includes - new.includes)]
    entry_first = sorted(removals, key=lambda op: op.context not in shared)
    return adds + entry_first


def touched(operations: list[Operation]) -> set[str]:
    return {op.context for op in operations}


def live_differences(
    context: str, wanted: Context | None, removed: Context, live: Context | None, shared: bool
) -> list[str]:
    """How the live context differs from the files (empty: it matches). A shared context
    is only compared on the keys our change touched: the other PBXs own the rest."""
    if wanted is None and not shared:
        return [] if live is None else [f"context {context} is still live"]
    wanted = wanted or Context()
    live = live or Context()
    problems = []
    for key, step in sorted(wanted.steps.items()):
        if live.steps.get(key) != step:
            problems.append(f"{context}: {key[0]},{key[1]} is {live.steps.get(key)}, not {step}")
    gone = set(removed.steps) - set(wanted.steps)
    if not shared:
        gone = set(live.steps) - set(wanted.steps)
    problems += [f"{context}: {e},{p} should be gone" for e, p in sorted(gone & set(live.steps))]
    if shared:
        missing = wanted.includes - live.includes
        extra = (removed.includes - wanted.includes) & live.includes
    else:
        missing, extra = wanted.includes - live.includes, live.includes - wanted.includes
    problems += [f"{context}: include {i} missing" for i in sorted(missing)]
    problems += [f"{context}: include {i} should be gone" for i in sorted(extra)]
    return problems


# --- PJSIP ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PjsipChange:
    """Endpoints a reload must bring (new or changed) and take away."""

    endpoints: frozenset[str]
    gone: frozenset[str]


def pjsip_change(before: Mapping[str, str], after: Mapping[str, str]) -> PjsipChange | None:
    """What differs between two sets of pjsip files (None: nothing, no reload needed).
    An object of any type that changed counts for the endpoint of the same name (ours
    are named alike: an aor, an auth and an endpoint per phone or trunk)."""
    old = {k: v for text in before.values() for k, v in sections(text).items()}
    new = {k: v for text in after.values() for k, v in sections(text).items()}
    if old == new:
        return None
    endpoints = {name for (name, kind) in new if kind == "endpoint"}
    changed = {name for key, text in new.items() if old.get(key) != text for name in [key[0]]}
    changed |= {name for key in old if key not in new for name in [key[0]]}
    gone = {name for (name, kind) in old if kind == "endpoint"} - endpoints
    return PjsipChange(frozenset(changed & endpoints), frozenset(gone))
