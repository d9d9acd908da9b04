"""Carrying out a round: files on the node's output folder, and AMI.

Files first (atomically; engineers read them, and a full reload of them is always the
truth), then Asterisk: the dialplan operations of the plan, or module reloads; then a
check of what should now be live.
"""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime

from provisioner.apply.plan import (
    AddInclude,
    AddStep,
    Operation,
    RemoveContext,
    RemoveInclude,
    RemoveStep,
    live_differences,
    touched,
)
from provisioner.asterisk import files
from provisioner.asterisk.ami import Ami, AsteriskUnavailable
from provisioner.asterisk.parse import Context, Dialplan, dialplan_in, endpoints_in, kind_of
from provisioner.db.rounds import Tenant
from provisioner.domain import names
from provisioner.metrics import OPERATIONS, RELOADS
from provisioner.render.render import redact, redacted
from provisioner.settings import Node

log = logging.getLogger(__name__)

MODULES = {"pjsip": "res_pjsip.so", "dialplan": "pbx_config.so"}


def expected(t: Tenant, wanted: dict[str, str] | None) -> dict[str, str]:
    """What must be live of the PBX after the round (redacted: only names are compared):
    what it wants now, or else what we last wrote."""
    return redacted(wanted) if wanted is not None else t.written


# --- Files ---------------------------------------------------------------------------


ALL_KINDS = frozenset(MODULES)
PJSIP = frozenset({"pjsip"})
DIALPLAN = frozenset({"dialplan"})


@dataclass(frozen=True)
class HandEdits:
    """What a look at the PBX's files on disk found: notes on each file set aside, and
    whether its files must be written again (set aside, or missing)."""

    notes: tuple[str, ...] = ()
    rewrite: bool = False


def set_aside_hand_edits(
    node: Node, t: Tenant, wanted: dict[str, str] | None, now: datetime,
    kinds: frozenset[str] = ALL_KINDS,
) -> HandEdits:  # fmt: skip
    """Set the PBX's hand-edited files (of these kinds) aside, never silently
    overwritten."""
    notes, rewrite = [], False
    ours = expected(t, wanted)
    for path, text in t.written.items():
        if kind_of(path) not in kinds:
            continue
        on_disk = files.read(node.output_dir, path)
        # What we render now is ours too: a crash after writing, before the revision
        # was committed, leaves exactly that on disk.
        if on_disk is not None and redact(on_disk) in (text, ours.get(path)):
            continue
        if on_disk is not None:
            kept = files.set_aside(node.output_dir, path, now)
            notes.append(f"{path} was changed by hand; set aside as {kept}")
            log.error("PBX %s: %s changed by hand, set aside as %s", t.slug, path, kept)
        rewrite = True
    return HandEdits(tuple(notes), rewrite)


def write_pbx(
    node: Node, t: Tenant, wanted: dict[str, str], kinds: frozenset[str] = ALL_KINDS
) -> frozenset[str]:
    """Write the PBX's files (of these kinds); the kinds of config that changed on disk
    or were written earlier but never seen live. OSError if the disk refuses."""
    folder, changed = node.output_dir, set()
    for path in set(t.written) - set(wanted):
        if kind_of(path) in kinds:
            files.remove(folder, path)
            changed.add(kind_of(path))
    for path, text in wanted.items():
        if kind_of(path) not in kinds:
            continue
        if files.read(folder, path) != text:
            files.write_atomic(folder, path, text, group=node.file_group)
            changed.add(kind_of(path))
        if t.good is None or t.good.get(path) != redact(text):
            changed.add(kind_of(path))
    return frozenset(changed)


def pjsip_due(node: Node, t: Tenant, wanted: dict[str, str]) -> bool:
    """Whether the PBX's PJSIP objects need a reload: unless the latest revision's
    objects are live and the new pjsip text (secrets included, which the revisions do
    not show) is that of the last good files. (Not "the disk did not change": a round
    that crashed after writing leaves new text never reloaded.) Never on a realtime
    node: its round makes the objects live itself (asterisk/realtime.py)."""
    if node.realtime:
        return False
    pjsip = {p for p in set(wanted) | set(t.written) if kind_of(p) == "pjsip"}
    return not t.pjsip_live or any(
        files.read_good(node.output_dir, p) != wanted.get(p) for p in pjsip
    )


def restore(node: Node, t: Tenant, wanted: dict[str, str]) -> dict[str, str]:
    """Put the PBX's last good files back in place of `wanted` (none: remove its
    files); returns the files now on disk."""
    folder = node.output_dir
    good = {path: files.read_good(folder, path) for path in t.good or {}}
    for path in set(wanted) - set(good):
        files.remove(folder, path)
    restored = {}
    for path, text in good.items():
        if text is None:  # its copy is lost: better nothing than a broken file
            files.remove(folder, path)
        else:
            files.write_atomic(folder, path, text, group=node.file_group)
            restored[path] = text
    return restored


# --- Asterisk --------------------------------------------------------------------------


async def reload(ami: Ami, kinds: set[str]) -> None:
    for kind in sorted(kinds):
        await reload_module(ami, MODULES[kind])


async def reload_module(ami: Ami, module: str) -> None:
    try:
        await ami.reload(module)
    except AsteriskUnavailable:
        RELOADS.labels(module=module, result="error").inc()
        raise
    RELOADS.labels(module=module, result="ok").inc()


async def verify_node(ami: Ami, expect: dict[Tenant, dict[str, str]]) -> dict[Tenant, str]:
    """The PBXs whose config (what must be live, redacted) is not what Asterisk has live,
    each with what differs. The whole node is read: the check of a full reload, which
    can drop any tenant's objects."""
    live = await ami.endpoints()
    contexts = await ami.contexts()
    failing = {}
    for t, config in expect.items():
        wanted = endpoints_in(config)
        missing = wanted - live
        stale = {e for e in live if names.owns(t.slug, e)} - wanted
        absent = set(dialplan_in(config)) - set(contexts)
        if missing or stale or absent:
            failing[t] = (
                f"live mismatch: missing endpoints {sorted(missing)[:5]},"
                f" stale endpoints {sorted(stale)[:5]}, missing contexts {sorted(absent)[:5]}"
            )
    return failing


async def run_dialplan(ami: Ami, operations: list[Operation]) -> None:
    """Send the operations in order; OperationFailed at the first one refused."""
    for op in operations:
        match op:
            case AddStep(context, extension, priority, app, data):
                await ami.add_step(context, extension, priority, app, data)
            case RemoveStep(context, extension, priority):
                await ami.remove_step(context, extension, priority)
            case AddInclude(context, included):
                await ami.command(
                    f"dialplan add include {included} into {context}", expect=("included in",)
                )
            case RemoveInclude(context, included):
                await ami.command(
                    f"dialplan remove include {included} from {context}",
                    expect=("removed", "Removed", "no such"),
                )
            case RemoveContext(context):
                await ami.command(
                    f"dialplan remove context {context}",
                    expect=("Removed context", "There is no such context"),
                )
        OPERATIONS.labels(kind=type(op).__name__).inc()


async def verify_dialplan(
    ami: Ami,
    operations: list[Operation],
    before: Dialplan,
    after: Dialplan,
    shared: AbstractSet[str],
) -> list[str]:
    """Read back every context the operations touched, and compare with the files."""
    problems: list[str] = []
    for name in sorted(touched(operations)):
        live = await ami.context(name)
        old = before.get(name) or Context()
        problems += live_differences(name, after.get(name), old, live, name in shared)
    return problems
