"""The drift check: database, files on disk and live Asterisk compared, PBX by PBX.

An apply round checks only what it changed. This check looks at a whole node: what
each PBX's files should be now (rendered from the database), what is on disk, and what
Asterisk has live (endpoints, contexts and their extensions, the PBX's numbers in
[carrier-in]); on a realtime node also the rows Asterisk reads its objects from.
Engineers run it (`provisioner check`, or GET /v1/nodes/{node}/check); with repair,
every drifted PBX is written again and both modules are reloaded (on a realtime node:
its rows written again, the objects they changed expired, the rest of the cache marked
stale).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

from provisioner.apply.round import Applier
from provisioner.asterisk import files, realtime
from provisioner.asterisk.ami import Ami
from provisioner.asterisk.parse import dialplan_in, endpoints_in
from provisioner.db import apply_queue, apply_state, pjsip_rows, rounds
from provisioner.db.pjsip_rows import Fields, Key
from provisioner.domain import names
from provisioner.domain.credentials import SecretBox
from provisioner.render.load import files_for_node
from provisioner.render.render import own_files
from provisioner.settings import Node

CARRIER_IN = "carrier-in"


@dataclass
class PbxDrift:
    """What differs for one PBX; empty lists: database, disk and Asterisk agree."""

    customer: str
    slug: str
    pending: bool  # a change is on its way: differences may be that change, not drift
    files: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.files and not self.live

    @property
    def status(self) -> str:
        """ok; pending (differs, but a queued change explains it); drift."""
        return "ok" if self.ok else "pending" if self.pending else "drift"


def node_clean(pbxes: list[PbxDrift], node_problems: list[str]) -> bool:
    return not node_problems and all(d.status != "drift" for d in pbxes)


@dataclass(frozen=True)
class Live:
    endpoints: set[str]
    dialplan: dict[str, set[str]]


async def check_node(
    pool: AsyncConnectionPool, node: Node, secrets: SecretBox
) -> tuple[list[PbxDrift], list[str]]:
    """Every PBX of the node, and the node's own problems (its carrier files)."""
    found = []
    async with pool.connection() as conn:
        for pbx in await rounds.node_pbxes(conn, node.name):
            # A queued job, or PJSIP objects waiting for the coalesced reload: what
            # differs may be that change on its way, not drift.
            state = await apply_state.get(conn, pbx.pbx.id)
            queued = await apply_queue.waiting_job(conn, pbx.pbx.id) is not None
            on_its_way = queued or (state is not None and state.state == "pending")
            drift = PbxDrift(pbx.pbx.customer, pbx.pbx.slug, on_its_way)
            try:
                wanted = (
                    {}
                    if pbx.pbx.removed_at is not None
                    else await files_for_node(conn, pbx.pbx, node, secrets)
                )
            except Exception as exc:
                drift.files.append(f"cannot render: {exc}")
                wanted = {}
            found.append((drift, wanted, pbx.pbx.removed_at is not None, pbx.pbx.id))
        rows = await pjsip_rows.of_node(conn, node.name) if node.realtime else {}
        readers = await pjsip_rows.readers(conn, node.name) if node.realtime else 0
    async with Ami(node) as ami:
        live = Live(await ami.endpoints(), await ami.contexts())
    node_problems = _compare_node(node, live)
    if node.realtime:
        if not readers:
            node_problems.append("no database role reads this node's rows (pjsip-reader)")
        ours = {pbx_id for *_, pbx_id in found}
        strays = sorted(pbx_id for pbx_id in rows if pbx_id is not None and pbx_id not in ours)
        if strays:
            node_problems.append(f"PJSIP rows of PBXs not on this node: ids {strays[:10]}")
        if rows.get(None, {}) != realtime.objects(own_files(node)):
            node_problems.append("the node's own PJSIP rows differ from its file (carrier)")
    written = [*own_files(node), *(path for _, wanted, *_ in found for path in wanted)]
    node_problems += files.unreadable(node.output_dir, written)
    for drift, wanted, removed, pbx_id in found:
        _compare_files(node, drift, wanted)
        if wanted or removed:  # (nothing rendered: nothing to compare with)
            if node.realtime:
                _compare_rows(drift, wanted, rows.get(pbx_id, {}))
            _compare_live(drift, wanted, live)
    return [drift for drift, *_ in found], node_problems


def _compare_node(node: Node, live: Live) -> list[str]:
    problems = []
    for path, text in own_files(node).items():
        if files.read(node.output_dir, path) != text:
            problems.append(f"{path} differs from what the config says")
    if "carrier" not in live.endpoints:
        problems.append("endpoint carrier is not live")
    if CARRIER_IN not in live.dialplan:
        problems.append("context carrier-in is not live")
    return problems


def _compare_files(node: Node, drift: PbxDrift, wanted: dict[str, str]) -> None:
    for path, text in sorted(wanted.items()):
        on_disk = files.read(node.output_dir, path)
        if on_disk is None:
            drift.files.append(f"{path} is missing")
        elif on_disk != text:
            drift.files.append(f"{path} differs from the database")


def _compare_rows(drift: PbxDrift, wanted: dict[str, str], rows: dict[Key, Fields]) -> None:
    """A realtime node: the PBX's rows against the objects of its files (names only:
    the rows hold its trunks' passwords)."""
    objects = realtime.objects(wanted)
    missing = sorted(f"{t} {i}" for t, i in objects.keys() - rows.keys())
    stale = sorted(f"{t} {i}" for t, i in rows.keys() - objects.keys())
    differ = sorted(
        f"{t} {i}" for (t, i), f in objects.items() if (t, i) in rows and rows[(t, i)] != f
    )
    if missing:
        drift.live.append(f"PJSIP rows missing: {', '.join(missing[:10])}")
    if stale:
        drift.live.append(f"PJSIP rows not in the files: {', '.join(stale[:10])}")
    if differ:
        drift.live.append(f"PJSIP rows differ from the files: {', '.join(differ[:10])}")


def _compare_live(drift: PbxDrift, wanted: dict[str, str], live: Live) -> None:
    expected_endpoints = endpoints_in(wanted)
    missing = sorted(expected_endpoints - live.endpoints)
    stale = sorted({e for e in live.endpoints if names.owns(drift.slug, e)} - expected_endpoints)
    if missing:
        drift.live.append(f"endpoints not live: {', '.join(missing[:10])}")
    if stale:
        drift.live.append(f"endpoints live but not in the files: {', '.join(stale[:10])}")
    plan = dialplan_in(wanted)
    own_contexts = {c for c in plan if c != CARRIER_IN}
    stale_contexts = sorted({c for c in live.dialplan if names.owns(drift.slug, c)} - own_contexts)
    if stale_contexts:
        drift.live.append(f"contexts live but not in the files: {', '.join(stale_contexts)}")
    for context, extensions in sorted(plan.items()):
        if context not in live.dialplan:
            drift.live.append(f"context {context} is not live")
            continue
        absent = sorted(extensions - live.dialplan[context])
        if absent:
            drift.live.append(f"{context}: extensions not live: {', '.join(absent[:10])}")
        if context != CARRIER_IN:  # shared by every PBX of the node
            extra = sorted(live.dialplan[context] - extensions)
            if extra:
                drift.live.append(
                    f"{context}: extensions not in the files: {', '.join(extra[:10])}"
                )


async def repair_node(applier: Applier, drifted: list[PbxDrift]) -> None:
    """Write every drifted PBX again (hand edits set aside) and reload both modules.

    The jobs carry `full_reload`: whichever applier takes them (the node's worker may,
    the moment they commit) reloads both modules, as live drift leaves the files as they
    were and an incremental round would find nothing to do. And the repair waits for a
    round already running, so that what it queued is done when it returns."""
    async with applier.pool.connection() as conn, conn.transaction():
        for pbx in await rounds.node_pbxes(conn, applier.node.name):
            if any(d.slug == pbx.pbx.slug for d in drifted):
                await apply_queue.request(
                    conn, pbx.pbx.id, "drift repair", applier.clock(), full_reload=True
                )
    await applier.round(full=True, wait=True)
