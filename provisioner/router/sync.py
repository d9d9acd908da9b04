"""The router step of the apply: switch a block's numbers on the SIP router once they are
live on their new node, then let the old node remove them.

The order for a block that moves from node 1 to node 2 (an assignment, a reset, a PBX
moving) is make before break:
1. node 2's apply round makes the numbers live there (its [carrier-in] entries), while
   node 1 keeps serving them: its PBX renders blocks the router still sends to it
   (db/pbx.py `_HELD`), and a PBX that moved away does not leave its old node while
   the router still sends numbers there (apply/round.py `_leave`);
2. this step sees the block due (`db/router.due`: its new PBX has no apply job left and
   its dialplan is live), records the switch as under way (`router_switching`), sets
   the block's keys on the router (a key per number prefix and length: a few per
   block, whatever its size), reads each back, and records the block in
   `router_blocks` (what Kamailio also loads at start);
3. it queues an apply of the block's old PBX, whose next round drops the block.
A block nobody uses any more is deleted from the router first, then from its node.

A router that cannot be reached leaves every change due, with the reason in the PBXs'
apply state (`router: pending`), and is tried again with backoff; nothing is lost
because nothing is marked done before the router read it back. The step is woken by
NOTIFY when a round records PBXs live, and polls every second besides.

Several routers side by side (router.rpc_url lists them; the carrier sends to any, and
retries on another) are each told every change, side by side, and each read back. A
change is done once every router that answers holds it, and at least one does: a dead
router holds up nothing. One that missed a change (could not be reached), or that
started again (core.uptime's up_since changed: it loaded the table at its start, maybe
before a change it was told by its previous process was committed), reloads the whole
table from the database as soon as it answers (`_catch_up`); so does each router the
first time it answers this step (what it missed before, while another instance of ours
ran, is not known here). The reload runs under the lock that every switch shares
(locks.ROUTER_TABLE): it reads every switch committed before it, and no key is set on
that router while it reloads. Why not Kamailio's dmq replication
of the htable: it copies what a router was told to the others that are up, but a
router that was down or restarted must load from the database anyway, and then two
paths keep the same table; with the database as the one source and this step telling
each router, there is one path, and the step's read-back proves each router's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from psycopg_pool import AsyncConnectionPool

from provisioner.clock import Clock
from provisioner.db import locks
from provisioner.db import router as db_router
from provisioner.db.router import Change
from provisioner.metrics import ROUTER_BEHIND, ROUTER_SECONDS, ROUTER_SWITCHES
from provisioner.router.rpc import Router, RouterRefused, RouterUnavailable
from provisioner.settings import Node
from provisioner.settings import Router as RouterSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF = 5.0  # seconds; a restarted router is right from its own load meanwhile
BATCH = 200  # blocks per pass
AT_ONCE = 2  # blocks switched side by side (each holds two pooled connections meanwhile)
IN_FLIGHT = 32  # calls of one block at a time: the others' calls go in between


CATCH_UP_EVERY = 1.0  # seconds between asking each router when it started


class NotRouted(Exception):
    """The router does not hold what we set (read back differs)."""


@dataclass
class Instance:
    """One router of several (or the only one), as this step knows it."""

    client: Router
    # Its core.uptime up_since when its table was last reloaded or found right (None:
    # not yet by this instance, which reloads it when it first answers).
    started: str | None = None
    behind: bool = False  # missed a change: reload the table when it answers
    catching: asyncio.Task[None] | None = None  # the catch-up under way, if any

    @property
    def url(self) -> str:
        return self.client.url


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
        self._nodes_loaded = False
        self._failures = 0
        self._next_try = 0.0
        self._last_error: str | None = None
        # Blocks being switched now, each by a task of its own, so that a slow or failing
        # block holds up no other: the next pass starts the next ones.
        self._switching: dict[str, asyncio.Task[None]] = {}
        self._at_once = asyncio.Semaphore(AT_ONCE)
        self.routers = [
            Instance(Router(url, timeout_ms=settings.timeout_ms)) for url in settings.rpc_urls
        ]
        self._asked = -CATCH_UP_EVERY

    async def step(self) -> int:
        """One pass: a task for each due block not being switched already; returns how
        many it started (0: nothing new due, or waiting after a failure)."""
        if time.monotonic() < self._next_try:
            return 0
        for instance in self.routers:
            instance.client.open()
        if time.monotonic() - self._asked >= CATCH_UP_EVERY:
            self._asked = time.monotonic()
            for instance in self.routers:
                # A task of its own: a router that hangs (frozen, not refusing) costs
                # its RPC timeout there, not in every pass of the step.
                if instance.catching is None or instance.catching.done():
                    instance.catching = asyncio.create_task(
                        self._catching_up(instance), name=f"router-catch-up-{instance.url}"
                    )
        async with self.pool.connection() as conn:
            await conn.set_autocommit(True)
            if not self._nodes_written:
                await db_router.set_nodes(conn, self.nodes, self.clock())
                self._nodes_written = True
            async with conn.transaction():
                changes = [
                    c for c in await db_router.due(conn, BATCH) if c.block_id not in self._switching
                ]
                uris = await db_router.node_uris(conn)
        if not self._nodes_loaded:
            self._nodes_loaded = await self._load_nodes()
        for change in changes:
            task = asyncio.create_task(self._switch(change, uris), name=f"router-{change.block_id}")
            self._switching[change.block_id] = task
            task.add_done_callback(self._switched)
        return len(changes)

    def _switched(self, task: asyncio.Task[None]) -> None:
        self._switching = {b: t for b, t in self._switching.items() if t is not task}

    async def stop(self) -> None:
        """The switches under way end with the worker (each is retried from its start)."""
        tasks = list(self._switching.values())
        tasks += [i.catching for i in self.routers if i.catching is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for instance in self.routers:
            await instance.client.close()

    async def _load_nodes(self) -> bool:
        """True once every router probes the nodes we wrote (dispatcher: the probes, and
        what tells a node's requests to its phones from a phone's); until then each pass
        asks, and a router that has others is told to load them (Router.marks_of)."""
        ours = set(self.nodes.values())
        loaded = True
        for instance in self.routers:
            try:
                loaded = set(await instance.client.marks_of(ours)) == ours and loaded
            except (RouterUnavailable, RouterRefused) as exc:
                loaded = False
                log.info("router %s: nodes not loaded yet (%s)", instance.url, exc)
        return loaded

    async def _catching_up(self, instance: Instance) -> None:
        """_catch_up in its task: what it cannot do now (the database away) it tries on
        a later pass."""
        try:
            await self._catch_up(instance)
        except Exception as exc:
            log.warning("router %s: catch-up not done yet: %s", instance.url, exc)

    async def _catch_up(self, instance: Instance) -> None:
        """A router that missed a change, or started again since we last asked, loads
        the whole table from the database, once no switch is under way. So does each
        router the first time it answers this step: what it missed before (a change
        made while it was away, by an instance of ours that has stopped since) is known
        to no one here (a reload took 0.1 s in the two-router test)."""
        try:
            started = await instance.client.started()
        except (RouterUnavailable, RouterRefused):
            return  # not there (yet): asked again on the next pass
        first = instance.started is None
        restarted = not first and instance.started != started
        if not (first or restarted or instance.behind):
            return
        why = (
            "started again" if restarted
            else "missed changes while unreachable" if instance.behind
            else "first seen by this instance"
        )  # fmt: skip
        began = time.monotonic()
        try:
            async with locks.held(self.pool, locks.ROUTER_TABLE, wait=True):
                await instance.client.reload_numbers()
        except (RouterUnavailable, RouterRefused) as exc:
            log.warning("router %s (%s): reload failed, tried again: %s", instance.url, why, exc)
            return
        # A router first seen, and missing nothing we know of, was never said behind.
        said = restarted or instance.behind
        if said:
            ROUTER_BEHIND.labels(router=instance.url).set(0)
        instance.started, instance.behind = started, False
        (log.warning if said else log.info)(
            "router %s (%s): its table reloaded from the database in %.1f s",
            instance.url, why, time.monotonic() - began,
        )  # fmt: skip

    async def _switch(self, change: Change, uris: dict[str, str]) -> None:
        """One block: the switch recorded as under way (its new PBX holds it from now on,
        whatever happens to its usage meanwhile), the router told and read back, the
        outcome recorded. A block that fails is retried later and stops no other; each
        block has its own lock, so two instances never push the same block at once."""
        try:
            await self._switch_one(change, uris)
        except Exception as exc:  # the database away: the block stays due, retried
            delay = self._back_off()
            log.warning("router: block %s not switched yet (%s); retrying in %.0f s",
                        change.block_id, exc, delay)  # fmt: skip

    async def _switch_one(self, change: Change, uris: dict[str, str]) -> None:
        block = locks.block(change.block_id)
        async with (
            self._at_once,
            locks.held(self.pool, block, sharing=locks.ROUTER_TABLE) as mine,
        ):
            if not mine:
                return  # another instance switches it right now
            async with self.pool.connection() as conn:
                async with conn.transaction():
                    await db_router.switching(conn, [change], self.clock())
                error, missed = await self._push(change, uris)
                async with conn.transaction():
                    if error is None:
                        await db_router.record_routed(conn, change, self.clock())
                    else:
                        await db_router.record_pending(conn, change, error[:500], self.clock())
        if error is not None:
            delay = self._back_off()
            if error != self._last_error:  # said once, not on every retry
                log.warning("router: changes wait (%s); retrying in %.0f s", error, delay)
                self._last_error = error
            return
        ROUTER_SWITCHES.inc()
        self._failures, self._next_try, self._last_error = 0, 0.0, None
        # Only now, committed: a catch-up from here on reads this change.
        for instance in missed:
            if not instance.behind:
                log.warning("router %s is unreachable: it catches up when it answers",
                            instance.url)  # fmt: skip
            instance.behind = True
            ROUTER_BEHIND.labels(router=instance.url).set(1)

    async def _push(
        self, change: Change, uris: dict[str, str]
    ) -> tuple[str | None, list[Instance]]:
        """Every router told the block's change, side by side, each read back. (None,
        the routers that could not be reached) once every router that answers holds
        it and at least one does; (why not, []) otherwise."""
        uri = None if change.node is None else uris.get(change.node)
        if change.node is not None and uri is None:
            return (
                f"block {change.block_id}: node {change.node} has no SIP address (asterisk.nodes)",
                [],
            )
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(push(i.client, change, uri) for i in self.routers), return_exceptions=True
        )
        missed: list[Instance] = []
        for instance, outcome in zip(self.routers, outcomes, strict=True):
            if isinstance(outcome, RouterUnavailable):
                missed.append(instance)
            elif isinstance(outcome, RouterRefused | NotRouted):
                return f"block {change.block_id}: {outcome}", []
            elif isinstance(outcome, BaseException):
                raise outcome
        if len(missed) == len(self.routers):
            return f"block {change.block_id}: {outcomes[0]}", []
        ROUTER_SECONDS.observe(time.monotonic() - started)
        return None, missed

    def _back_off(self) -> float:
        """One more failure: the next pass waits, doubling up to MAX_BACKOFF; the delay."""
        self._failures += 1
        delay: float = min(self.settings.retry_seconds * 2.0 ** (self._failures - 1), MAX_BACKOFF)
        self._next_try = time.monotonic() + delay
        return delay


async def push(r: Router, change: Change, uri: str | None) -> None:
    """Set the block's keys to the node's address (None: the block is gone), then
    delete the keys it lost, then read all back; each phase's calls go out IN_FLIGHT at
    a time over the client's few connections."""
    if uri is not None:
        await _in_batches([r.set(key, uri) for key in change.keys])
    kept = set(change.keys)
    gone = [k for k in change.old_keys if k not in kept]
    await _in_batches([r.delete(key) for key in gone])
    found = await _in_batches([r.get(key) for key in [*change.keys, *gone]])
    wanted = [uri] * len(change.keys) + [None] * len(gone)
    for key, has, should in zip([*change.keys, *gone], found, wanted, strict=True):
        if has != should:
            raise NotRouted(f"{key}: router has {has}, not {should}")


async def _in_batches(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """The calls, IN_FLIGHT at a time, their results in order: a block's calls never
    fill the client's queue, so other blocks' calls get their turn between batches."""
    results: list[T] = []
    started = 0
    try:
        for start in range(0, len(calls), IN_FLIGHT):
            batch = [asyncio.ensure_future(c) for c in calls[start : start + IN_FLIGHT]]
            started = start + len(batch)
            try:
                results += await asyncio.gather(*batch)
            except BaseException:
                # One call failed: its batch's others end now, not at their timeouts.
                for task in batch:
                    task.cancel()
                await asyncio.gather(*batch, return_exceptions=True)
                raise
    finally:
        for call in calls[started:]:
            call.close()  # a batch failed: the calls not started never will
    return results
