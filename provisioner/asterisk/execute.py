"""Carrying out a round: files on the node's output folder, and AMI.

Files first (atomically; engineers read them, and a full reload of them is always the
truth), then Asterisk: the dialplan operations of the plan, or module reloads; then a
check of what should now be live.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from provisioner.asterisk import files
from provisioner.asterisk.ami import Ami, AsteriskUnavailable
from provisioner.asterisk.parse import dialplan_in, endpoints_in
from provisioner.asterisk.plan import (
    AddInclude,
    AddStep,
    Context,
    Dialplan,
    Operation,
    RemoveContext,
    RemoveInclude,
    RemoveStep,
    live_differences,
    touched,
)
from provisioner.db.accounts import OfPbx, Pbx
from provisioner.db.config import Job
from provisioner.metrics import OPERATIONS, RELOADS
from provisioner.render.render import redact, redacted
from provisioner.settings import Node

log = logging.getLogger(__name__)

MODULES = {"pjsip": "res_pjsip.so", "dialplan": "pbx_config.so"}


def kind_of(path: str) -> str:
    return path.split("/", 1)[0]


@dataclass(eq=False)  # compared by identity: two PBXs are never "equal"
class Tenant(OfPbx):
    """One PBX of the node during a round."""

    pbx: Pbx
    job: Job | None
    wanted: dict[str, str] | None  # what it should be now, on disk (None: not rendered)
    written: dict[str, str]  # what we last wrote (latest revision, redacted)
    good: dict[str, str] | None  # last revision verified live in both parts (redacted)
    revision: int | None = None
    attempted: dict[str, str] | None = None  # the config that was rolled back
    problems: list[str] = field(default_factory=list)
    # Why its files could not be rendered or written this round: it waits for a retry,
    # and the node's other PBXs go on without it.
    broken: str | None = None
    # Incremental rounds only: the files whose dialplan is live, and whether the PJSIP
    # objects of the latest revision are live; set by the round: whether the new PJSIP
    # objects need a reload of res_pjsip.
    live_dialplan: dict[str, str] = field(default_factory=dict)
    pjsip_live: bool = False
    pjsip_due: bool = False

    @property
    def expected(self) -> dict[str, str]:
        """What must be live after this round (redacted: only names are compared)."""
        return redacted(self.wanted) if self.wanted is not None else self.written


# --- Files ---------------------------------------------------------------------------


ALL_KINDS = frozenset(MODULES)


def hand_edited(node: Node, t: Tenant, now: datetime, kinds: frozenset[str] = ALL_KINDS) -> bool:
    """Set the PBX's hand-edited files (of these kinds) aside, never silently
    overwritten; True if any was, so the PBX must be rendered and written again."""
    found = False
    ours = t.expected
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
            t.problems.append(f"{path} was changed by hand; set aside as {kept}")
            log.error("PBX %s: %s changed by hand, set aside as %s", t.slug, path, kept)
        found = True
    return found


def write_pbx(node: Node, t: Tenant, kinds: frozenset[str] = ALL_KINDS) -> set[str]:
    """Write the PBX's rendered files (of these kinds); the kinds of config that changed
    on disk or were written earlier but never seen live."""
    assert t.wanted is not None
    folder, changed = node.output_dir, set()
    for path in set(t.written) - set(t.wanted):
        if kind_of(path) in kinds:
            files.remove(folder, path)
            changed.add(kind_of(path))
    for path, text in t.wanted.items():
        if kind_of(path) not in kinds:
            continue
        if files.read(folder, path) != text:
            files.write_atomic(folder, path, text, group=node.file_group)
            changed.add(kind_of(path))
        if t.good is None or t.good.get(path) != redact(text):
            changed.add(kind_of(path))
    return changed


def write_pjsip_noting_reload(node: Node, t: Tenant) -> None:
    """Write the PBX's pjsip file, and note whether its PJSIP objects need a reload:
    unless the latest revision's objects are live and the new pjsip text (secrets
    included, which the revisions do not show) is that of the last good files. (Not
    "the disk did not change": a round that crashed after writing leaves new text
    never reloaded.)"""
    assert t.wanted is not None
    write_pbx(node, t, PJSIP)
    pjsip = {p for p in set(t.wanted) | set(t.written) if kind_of(p) == "pjsip"}
    t.pjsip_due = not t.pjsip_live or any(
        files.read_good(node.output_dir, p) != t.wanted.get(p) for p in pjsip
    )


PJSIP = frozenset({"pjsip"})
DIALPLAN = frozenset({"dialplan"})


def restore(node: Node, t: Tenant) -> None:
    """Put the PBX's last good files back (none: remove its files)."""
    assert t.wanted is not None
    folder = node.output_dir
    t.attempted = dict(t.wanted)
    good = {path: files.read_good(folder, path) for path in t.good or {}}
    for path in set(t.wanted) - set(good):
        files.remove(folder, path)
    restored = {}
    for path, text in good.items():
        if text is None:  # its copy is lost: better nothing than a broken file
            files.remove(folder, path)
        else:
            files.write_atomic(folder, path, text, group=node.file_group)
            restored[path] = text
    t.wanted = restored


# --- Asterisk --------------------------------------------------------------------------


async def reload(ami: Ami, kinds: set[str]) -> None:
    for kind in sorted(kinds):
        module = MODULES[kind]
        try:
            await ami.reload(module)
        except AsteriskUnavailable:
            RELOADS.labels(module=module, result="error").inc()
            raise
        RELOADS.labels(module=module, result="ok").inc()


async def verify_node(ami: Ami, tenants: list[Tenant]) -> list[Tenant]:
    """The tenants whose config is not what Asterisk has live (the whole node is read:
    the check of a full reload, which can drop any tenant's objects)."""
    live = await ami.endpoints()
    contexts = await ami.contexts()
    failing = []
    for t in tenants:
        if t.broken is not None:
            continue  # recorded as broken; what is live of it is whatever was before
        config = t.expected
        expected = endpoints_in(config)
        missing = expected - live
        stale = {e for e in live if e.startswith(f"{t.slug}-")} - expected
        absent = set(dialplan_in(config)) - set(contexts)
        if missing or stale or absent:
            t.problems.append(
                f"live mismatch: missing endpoints {sorted(missing)[:5]},"
                f" stale endpoints {sorted(stale)[:5]}, missing contexts {sorted(absent)[:5]}"
            )
            failing.append(t)
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
    ami: Ami, operations: list[Operation], before: Dialplan, after: Dialplan, shared: set[str]
) -> list[str]:
    """Read back every context the operations touched, and compare with the files."""
    problems: list[str] = []
    for name in sorted(touched(operations)):
        live = await ami.context(name)
        old = before.get(name) or Context()
        problems += live_differences(name, after.get(name), old, live, name in shared)
    return problems
