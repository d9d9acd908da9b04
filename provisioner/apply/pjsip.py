"""The coalesced res_pjsip reload of a node.

PJSIP objects from config files only change with a reload of res_pjsip, which costs
seconds on a node of 10,000 endpoints and grows with the node, not with the change. So
an apply round never waits for one: it makes the dialplan live (a moved number routes
at once: its target phones' endpoints exist already) and leaves its PJSIP objects
pending. This reloader takes them all: at most one reload per `min_interval`, started
a moment (`settle`) after it was woken so a burst of rounds is covered by one; a reload
covers every revision recorded before it began. Then it checks just the endpoints that
changed (PJSIPShowEndpoint), and each PBX whose PJSIP objects are now live and whose
dialplan is too becomes applied. A PBX whose objects do not show up is queued for a
full round (which rolls it back if its config cannot come up).
"""

from __future__ import annotations

import asyncio
import logging
import time

from psycopg_pool import AsyncConnectionPool

from provisioner.apply.execute import MODULES, reload
from provisioner.apply.plan import pjsip_change
from provisioner.apply.record import outcome
from provisioner.asterisk import files
from provisioner.asterisk.ami import Ami, AsteriskUnavailable, OperationFailed
from provisioner.asterisk.parse import of_kind
from provisioner.clock import Clock
from provisioner.db import apply_queue, apply_state, locks, rounds
from provisioner.db.rounds import PjsipPending
from provisioner.domain import names
from provisioner.metrics import PJSIP_WAIT
from provisioner.render.render import redact
from provisioner.settings import Node

log = logging.getLogger(__name__)


class PjsipReloader:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        node: Node,
        clock: Clock,
        *,
        min_interval: float = 1.0,
        settle: float = 0.25,
    ) -> None:
        self.pool, self.node, self.clock = pool, node, clock
        self.min_interval, self.settle = min_interval, settle
        self._last_start = -min_interval

    async def step(self) -> int:
        """One reload if anything waits for one; how many PBXs it made live."""
        async with locks.held(self.pool, locks.node(self.node.name, "pjsip")) as mine:
            if not mine:
                return 0
            async with self.pool.connection() as conn:
                if not await rounds.pjsip_pending(conn, self.node.name):
                    return 0
            wait = max(self.settle, self._last_start + self.min_interval - time.monotonic())
            await asyncio.sleep(wait)
            return await self._reload()

    async def _reload(self) -> int:
        async with self.pool.connection() as conn:
            # Read at the start: every revision recorded before this reload began has
            # its files on disk (written before the round committed).
            pending = await rounds.pjsip_pending(conn, self.node.name)
        if not pending or not await self._files_are_ours():
            return 0
        self._last_start = time.monotonic()
        try:
            async with Ami(self.node) as ami:
                await reload(ami, {"pjsip"})
                problems = {p.pbx_id: await _check(ami, p) for p in pending}
        except (AsteriskUnavailable, OperationFailed) as exc:
            log.warning("node %s: PJSIP reload for %d PBXs waits: %s",
                        self.node.name, len(pending), exc)  # fmt: skip
            return 0
        live = 0
        async with self.pool.connection() as conn, conn.transaction():
            now = self.clock()
            for p in pending:
                if problems[p.pbx_id]:
                    unread = files.unreadable(
                        self.node.output_dir, sorted(of_kind(p.files, "pjsip"))
                    )
                    why = "; ".join(
                        [f"PJSIP objects not live after reload: {problems[p.pbx_id]}", *unread]
                    )
                    log.error("PBX %s: %s; queued for a full round", p.slug, why)
                    await apply_queue.request(conn, p.pbx_id, why, now, full_reload=True)
                    continue
                if await apply_state.pjsip_live(conn, p.pbx_id, p.revision, now):
                    live += 1
                    await outcome(conn, p.pbx, "applied", p.revision, None, now)
                    PJSIP_WAIT.observe(max((now - p.since).total_seconds(), 0.0))
                    self._keep_good(p)
        log.info("node %s: %s reloaded for %d PBXs", self.node.name, MODULES["pjsip"], live)
        return live

    async def _files_are_ours(self) -> bool:
        """A reload reads every PJSIP file of the node, and a broken one (a hand edit) can
        drop other tenants' objects. So first each file must be what we last wrote; a
        PBX whose file is not is queued for a full round, which sets the edit aside and
        writes ours again, and this reload waits for it. Checked while no round writes
        (the node's apply lock), or a file just written would look like a hand edit."""
        async with (
            locks.held(self.pool, locks.node(self.node.name), wait=True),
            self.pool.connection() as conn,
            conn.transaction(),
        ):
            edited = [
                w.pbx
                for w in await rounds.node_written(conn, self.node.name)
                if _pjsip_edited(self.node, w.files)
            ]
            for pbx in edited:
                if await apply_queue.waiting_job(conn, pbx.id) is None:
                    await apply_queue.request(
                        conn, pbx.id, "its PJSIP file differs from ours", self.clock(),
                        full_reload=True,
                    )  # fmt: skip
        if edited:
            log.error("node %s: PJSIP files of %s differ from ours; reload waits for their repair",
                      self.node.name, ", ".join(pbx.slug for pbx in edited))  # fmt: skip
        return not edited

    def _keep_good(self, p: PjsipPending) -> None:
        """The real text (with secrets) of files now live in both parts, for rollbacks:
        from the disk, if it still is that revision."""
        folder = self.node.output_dir
        real = {path: files.read(folder, path) for path in p.files}
        if all(text is not None and redact(text) == p.files[path] for path, text in real.items()):
            files.keep_good(folder, {k: v for k, v in real.items() if v is not None}, p.live,
                            group=self.node.file_group)  # fmt: skip


async def _check(ami: Ami, p: PjsipPending) -> str:
    """What of the revision's endpoint changes is not live ("" if all is)."""
    change = pjsip_change(of_kind(p.live, "pjsip"), of_kind(p.files, "pjsip"))
    if change is None:
        return ""
    live = await ami.endpoints_like(names.owned_prefix(p.slug))
    missing = sorted(change.endpoints - live)
    stale = sorted(change.gone & live)
    if missing or stale:
        return f"missing {missing[:5]}, still there {stale[:5]}"
    return ""


def _pjsip_edited(node: Node, written: dict[str, str]) -> bool:
    for path, text in of_kind(written, "pjsip").items():
        on_disk = files.read(node.output_dir, path)
        if on_disk is not None and redact(on_disk) != text:
            return True
    return False
