"""The router step of the apply: switch a block's numbers on the SIP router once they are
live on their new node, then let the old node remove them.

The order for a block that moves from node 1 to node 2 (an assignment, a reset, a PBX
moving) is make before break:
1. node 2's apply round makes the numbers live there (its [carrier-in] entries), while
   node 1 keeps serving them: its PBX renders blocks the router still sends to it
   (db/pbx.py `_HELD`), and a PBX that moved away does not leave its old node while
   the router still sends numbers there (asterisk/apply.py `_leave`);
2. this step sees the block due (`db/router.due`: its new PBX has no apply job left and
   its dialplan is live), sets each number on the router, reads each back, and records
   the block in `router_blocks` (what Kamailio also loads at start);
3. it queues an apply of the block's old PBX, whose next round drops the block.
A block nobody uses any more is deleted from the router first, then from its node.

A router that cannot be reached leaves every change due, with the reason in the PBXs'
apply state (`router: pending`), and is tried again with backoff; nothing is lost
because nothing is marked done before the router read it back. The step is woken by
NOTIFY when a round records PBXs live, and polls every second besides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from provisioner.clock import Clock
from provisioner.db import Conn, apply_queue, events
from provisioner.db import router as db_router
from provisioner.db.router import Change
from provisioner.domain.events import RouterOutcome
from provisioner.metrics import ROUTER_SECONDS, ROUTER_SWITCHES
from provisioner.router.rpc import Router, RouterRefused, RouterUnavailable
from provisioner.settings import Node
from provisioner.settings import Router as RouterSettings

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0  # seconds; a restarted router is right from its own load meanwhile
BATCH = 200  # blocks per pass


class NotRouted(Exception):
    """The router does not hold what we set (read back differs)."""


class RouterSync:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: RouterSettings,
        nodes: tuple[Node, ...],
        clock: Clock,
    ) -> None:
        self.pool, self.settings, self.clock = pool, settings, clock
        self.nodes = {n.name: n.sip_uri for n in nodes}
        self._nodes_written = False
        self._failures = 0
        self._next_try = 0.0
        self._last_error: str | None = None

    async def step(self) -> int:
        """One pass; returns how many blocks it switched (0: nothing due, or waiting)."""
        if time.monotonic() < self._next_try:
            return 0
        async with self.pool.connection() as conn:
            await conn.set_autocommit(True)
            if not self._nodes_written:
                await db_router.set_nodes(conn, self.nodes, self.clock())
                self._nodes_written = True
            async with conn.transaction():
                await db_router.lock(conn)
                changes = await db_router.due(conn, BATCH)
                if not changes:
                    return 0
                uris = await db_router.node_uris(conn)
                done = await self._push_all(conn, changes, uris)
        return done

    async def _push_all(self, conn: Conn, changes: list[Change], uris: dict[str, str]) -> int:
        done: list[Change] = []
        try:
            async with Router(self.settings.rpc_url, timeout_ms=self.settings.timeout_ms) as r:
                for change in changes:
                    started = time.monotonic()
                    await push(r, change, uris)
                    ROUTER_SECONDS.observe(time.monotonic() - started)
                    done.append(change)
        except (RouterUnavailable, RouterRefused, NotRouted) as exc:
            await self._record(conn, done)
            await self._failed(conn, changes[len(done) :], str(exc))
            return len(done)
        await self._record(conn, done)
        self._failures, self._next_try, self._last_error = 0, 0.0, None
        return len(done)

    async def _record(self, conn: Conn, done: list[Change]) -> None:
        if not done:
            return
        now = self.clock()
        for change in done:
            await db_router.routed(conn, change, now)
            ROUTER_SWITCHES.inc()
            if change.old_pbx_id is not None and change.old_node != change.node:
                # The old node stops serving the block (it held it until now).
                await apply_queue.request(
                    conn, change.old_pbx_id, f"router sends block {change.block_id} elsewhere",
                    now,
                )  # fmt: skip
        # Each PBX whose blocks were switched hears it (the portal learns that its
        # numbers reach the node now); its state says whether any block still waits.
        still = await db_router.pending_pbxes(conn)
        routed = {c.pbx_id for c in done if c.pbx_id is not None}
        await db_router.set_pbx_state(conn, routed - still, "routed", None, now)
        for pbx_id in sorted(routed):
            blocks = tuple(c.block_id for c in done if c.pbx_id == pbx_id)
            await _event(conn, "router.routed", pbx_id, blocks, None, now)

    async def _failed(self, conn: Conn, waiting: list[Change], error: str) -> None:
        self._failures += 1
        delay = min(self.settings.retry_seconds * 2 ** (self._failures - 1), MAX_BACKOFF)
        self._next_try = time.monotonic() + delay
        if error != self._last_error:
            log.warning("router: %d blocks wait (%s); retrying in %.0f s",
                        len(waiting), error, delay)  # fmt: skip
            self._last_error = error
        now = self.clock()
        pbx_ids = {c.pbx_id for c in waiting if c.pbx_id is not None}
        for pbx_id in await db_router.set_pbx_state(conn, pbx_ids, "pending", error[:500], now):
            blocks = tuple(c.block_id for c in waiting if c.pbx_id == pbx_id)
            await _event(conn, "router.pending", pbx_id, blocks, error[:500], now)


async def push(r: Router, change: Change, uris: dict[str, str]) -> None:
    """Set the block's numbers, then delete the numbers it lost, then read all back; each
    phase's calls go out together over the client's few connections."""
    uri = None
    if change.node is not None:
        uri = uris.get(change.node)
        if uri is None:
            raise RouterRefused(f"node {change.node} has no SIP address (asterisk.nodes)")
        await asyncio.gather(*(r.set(number, uri) for number in change.numbers))
    kept = set(change.numbers)
    gone = [n for n in change.old_numbers if n not in kept]
    await asyncio.gather(*(r.delete(number) for number in gone))
    found = await asyncio.gather(*(r.get(number) for number in [*change.numbers, *gone]))
    wanted = [uri] * len(change.numbers) + [None] * len(gone)
    for number, has, should in zip([*change.numbers, *gone], found, wanted, strict=True):
        if has != should:
            raise NotRouted(f"{number}: router has {has}, not {should}")


async def _event(
    conn: Conn, type_: str, pbx_id: int, blocks: tuple[str, ...], error: str | None,
    now: datetime,
) -> None:  # fmt: skip
    found = await db_router.pbx_home(conn, pbx_id)
    if found is None:
        return
    customer, node = found
    await events.emit(
        conn, type_, RouterOutcome(customer=customer, node=node, blocks=list(blocks),
                                   error=error), now,
    )  # fmt: skip
