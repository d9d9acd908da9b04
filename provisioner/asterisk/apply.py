"""Applying config to one Asterisk node: a round, read as its steps.

One round takes every due job of the node (a burst becomes one round) and:
1. renders the PBXs with jobs, sets hand-edited files aside, writes the files (the
   truth: engineers read them, and a full reload of them is what Asterisk must match);
2. makes Asterisk match them, incrementally by default: the dialplan by AMI operations
   worked out in `plan` (only the contexts that changed; no module reload), checked by
   reading back just those contexts. PJSIP objects only come from a reload of
   res_pjsip, so that part is left to the node's coalesced reloader (`pjsip`), off the
   path of inbound routing;
3. records one outcome per PBX (`record`).

A full round instead reloads both modules and checks every PBX of the node (a reload's
"Success" proves nothing: a parse error in one tenant's file can drop another tenant's
objects), and rolls a failing PBX back to its last good revision. It runs when asked
(`provisioner apply --full`, a drift repair, `asterisk.incremental: false`), for a retry
after a round failed at Asterisk, and as the fallback of an incremental round whose
operation Asterisk refused or whose result does not read back as the files say.

A round's reads and renders cover only the PBXs with jobs; hand edits of the others are
found by the drift check (`check`), which the worker also runs on a slow timer.

Secrets: the files on disk carry them (Asterisk needs them); the revisions in the
database carry `<secret>` in their place (render.redact). So what we wrote is compared
with the disk in redacted form, a PBX whose files must be put back is rendered again,
and the real text of each PBX's last good files is kept beside them (files.keep_good).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from provisioner.asterisk import execute, files, plan
from provisioner.asterisk.ami import Ami, AsteriskUnavailable, OperationFailed
from provisioner.asterisk.execute import MODULES, Tenant, kind_of
from provisioner.asterisk.record import record_retry, record_round
from provisioner.clock import Clock
from provisioner.db import Conn
from provisioner.db import config as db_config
from provisioner.db.config import Job
from provisioner.domain.credentials import SecretBox
from provisioner.metrics import APPLY_SECONDS, ROUNDS
from provisioner.render.load import load_view
from provisioner.render.render import node_files, pbx_files
from provisioner.render.view import Carrier
from provisioner.settings import Node

log = logging.getLogger(__name__)

# A round holds its jobs by a lease it renews while it runs; an instance that dies
# (kill -9) loses them to another instance within one lease.
LEASE = timedelta(seconds=15)


async def apply_node(
    pool: AsyncConnectionPool,
    node: Node,
    clock: Clock,
    secrets: SecretBox,
    *,
    retry_seconds: int = 5,
    limit: int = 500,
    full: bool = False,
    incremental: bool = True,
    wait: bool = False,
) -> int:
    """One round for one node; returns how many PBX jobs and departures of moved PBXs it
    took (0: nothing due). `full`, or a job queued with `full_reload`, reloads both
    modules even where no file changed (a drift repair, a retry after Asterisk failed).
    `wait`: wait for a round another applier is running, instead of leaving the node to
    it (a repair must not return before what it queued is done)."""
    async with pool.connection() as lock_conn:
        await lock_conn.set_autocommit(True)
        if wait:
            await db_config.wait_node_lock(lock_conn, node.name)
        elif not await db_config.try_node_lock(lock_conn, node.name):
            return 0  # another instance is applying to this node right now
        try:
            left = await _leave(pool, node)
            async with pool.connection() as conn, conn.transaction():
                now = clock()
                jobs = await db_config.claim_jobs(conn, node.name, now, now + LEASE, limit)
            if not jobs and not full:
                return left
            # A full round runs without jobs too: it writes and reloads the node's own
            # files (a repair of the node's drift where no PBX drifted).
            started = time.monotonic()
            renewing = asyncio.create_task(_renew_lease(pool, jobs, clock))
            try:
                round_ = _Round(pool, node, clock, secrets, jobs, retry_seconds)
                reload_all = full or any(j.full_reload for j in jobs)
                if reload_all or not incremental:
                    ROUNDS.labels(mode="full").inc()
                    await round_.full(reload_all=reload_all)
                else:
                    await round_.incremental()
                result = "applied"
            except Exception as exc:
                # Asterisk away, or anything else that stopped the whole round: every job
                # of it waits for a retry (never for its lease to run out), by full reload.
                result = "retry"
                if isinstance(exc, AsteriskUnavailable):
                    log.warning("node %s unavailable, %d applies wait: %s",
                                node.name, len(jobs), exc)  # fmt: skip
                else:
                    log.exception("apply round on node %s failed; %d applies wait",
                                  node.name, len(jobs))  # fmt: skip
                async with pool.connection() as conn, conn.transaction():
                    await record_retry(conn, jobs, str(exc), clock(), retry_seconds, full=True)
            finally:
                renewing.cancel()
                await asyncio.gather(renewing, return_exceptions=True)
            APPLY_SECONDS.labels(result=result).observe(time.monotonic() - started)
            return len(jobs)
        finally:
            await db_config.node_unlock(lock_conn, node.name)


# (node, PBX id) -> why it could not leave that node on the last try; for the log only.
_LEAVE_TROUBLE: dict[tuple[str, int], str] = {}


async def _leave(pool: AsyncConnectionPool, node: Node) -> int:
    """Remove from this node the PBXs that moved away and are live on their new node:
    their files, their contexts and [carrier-in] entries (AMI operations), their
    endpoints (a reload of res_pjsip: a move is rare, it is not coalesced). Returns how
    many left; one that cannot yet is tried again on the next pass (every 2 s while the
    node is down: said once in the log, and again only when the reason changes)."""
    async with pool.connection() as conn:
        found = await db_config.leaving(conn, node.name)
    done = 0
    for gone in found:
        try:
            await _remove_from_node(node, gone)
        except (AsteriskUnavailable, OperationFailed, plan.NotOurs, OSError) as exc:
            if _LEAVE_TROUBLE.get((node.name, gone.pbx.id)) != str(exc):
                log.warning("PBX %s cannot leave node %s yet: %s", gone.pbx.slug, node.name, exc)
            _LEAVE_TROUBLE[(node.name, gone.pbx.id)] = str(exc)
            continue
        _LEAVE_TROUBLE.pop((node.name, gone.pbx.id), None)
        async with pool.connection() as conn:
            await db_config.left(conn, gone.pbx.id)
        log.info("PBX %s left node %s for %s", gone.pbx.slug, node.name, gone.pbx.node)
        done += 1
    return done


async def _remove_from_node(node: Node, gone: db_config.Leaving) -> None:
    folder = node.output_dir
    for path in gone.files:
        files.remove(folder, path)
    files.keep_good(folder, {}, gone.files)  # its last good copies go too
    shared = set(plan.parse_dialplan(_dialplan_texts(node_files(Carrier.of(node)))))
    before = plan.parse_dialplan(_dialplan_texts(gone.files))
    operations = plan.dialplan_operations(before, {}, shared)
    async with Ami(node) as ami:
        await execute.run_dialplan(ami, operations)
        problems = await execute.verify_dialplan(ami, operations, before, {}, shared)
        if any(kind_of(path) == "pjsip" for path in gone.files):
            await execute.reload(ami, {"pjsip"})
        stale = await ami.endpoints_like(f"{gone.pbx.slug}-")
    if problems or stale:
        raise OperationFailed(f"still live: {problems[:3]}, endpoints {sorted(stale)[:3]}")


async def _renew_lease(pool: AsyncConnectionPool, jobs: list[Job], clock: Clock) -> None:
    """Keep the round's jobs leased while it runs (a slow reload must not let another
    instance take them); stops with the round."""
    while True:
        await asyncio.sleep(LEASE.total_seconds() / 3)
        try:
            async with pool.connection() as conn:
                await db_config.renew_lease(conn, [j.pbx_id for j in jobs], clock() + LEASE)
        except Exception as exc:  # the round itself will meet the same trouble
            log.warning("could not renew the lease of %d apply jobs: %s", len(jobs), exc)


class _Round:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        node: Node,
        clock: Clock,
        secrets: SecretBox,
        jobs: list[Job],
        retry_seconds: int,
    ) -> None:
        self.pool, self.node, self.clock, self.secrets = pool, node, clock, secrets
        self.jobs, self.retry_seconds = jobs, retry_seconds

    async def _render(self, conn: Conn, t: Tenant) -> None:
        """The PBX's files as they should be now; a PBX that cannot be rendered (a value
        config cannot carry, a key that no longer opens its trunk password) is marked
        broken with the reason, and the round goes on with the others."""
        if t.pbx.removed_at is not None:
            t.wanted = {}  # removed: its files go, and with them its live objects
            return
        try:
            async with conn.transaction():  # a failed query must not end the round's
                view = await load_view(conn, t.pbx, self.secrets)
            t.wanted = pbx_files(view, Carrier.of(self.node))
        except Exception as exc:
            t.broken = f"cannot render: {exc}"
            log.exception("PBX %s cannot be rendered", t.slug)

    def _write_node_files(self) -> set[str]:
        """The node's own files (carrier endpoint), from the config; kinds changed."""
        changed = set()
        for path, text in node_files(Carrier.of(self.node)).items():
            if files.read(self.node.output_dir, path) != text:
                files.write_atomic(self.node.output_dir, path, text, group=self.node.file_group)
                changed.add(kind_of(path))
        return changed

    def _write(self, t: Tenant, write: Callable[[Node, Tenant], object]) -> None:
        if t.wanted is None or t.broken is not None:
            return
        try:
            write(self.node, t)
        except OSError as exc:  # a full or read-only disk: this PBX waits, others go on
            t.broken = f"cannot write its files: {exc}"
            log.error("PBX %s: %s", t.slug, t.broken)

    async def _record(self, tenants: list[Tenant], failing: list[Tenant]) -> None:
        for t in tenants:
            done = t.wanted is not None and t.broken is None and t not in failing
            if done and not t.pjsip_due:
                files.keep_good(self.node.output_dir, t.wanted or {}, t.good or {},
                                group=self.node.file_group)  # fmt: skip
        async with self.pool.connection() as conn, conn.transaction():
            await record_round(conn, tenants, failing, self.clock(), self.retry_seconds)
            if any(t.pjsip_due and t.broken is None for t in tenants):
                await db_config.notify_pjsip_due(conn)

    # --- The incremental round ----------------------------------------------------------

    async def incremental(self) -> None:
        node = self.node
        by_pbx = {job.pbx_id: job for job in self.jobs}
        async with self.pool.connection() as conn, conn.transaction():
            found = await db_config.round_pbxes(conn, list(by_pbx))
            tenants = [
                Tenant(
                    f.pbx,
                    by_pbx[f.pbx.id],
                    None,
                    f.written,
                    f.good,
                    f.latest,
                    live_dialplan=f.live_dialplan,
                    pjsip_live=f.pjsip_live,
                )
                for f in found
                if f.pbx.node == node.name  # moved away meanwhile: the next round is full
            ]
            for t in tenants:
                await self._render(conn, t)
        if "dialplan" in self._write_node_files():
            # [carrier-in]'s own fallbacks changed (the node's config): reload it whole.
            await self._fall_back(tenants, "the node's dialplan file changed")
            return
        # Each part's file is written before that part goes live: the dialplan file, its
        # AMI operations (now a moved number routes), then the pjsip file for the
        # coalesced reload; the read-back of the dialplan comes last.
        now = self.clock()
        for t in tenants:
            if t.broken is None:
                execute.hand_edited(node, t, now, execute.DIALPLAN)
            self._write(t, lambda n, t: execute.write_pbx(n, t, execute.DIALPLAN))
        ready = [t for t in tenants if t.wanted is not None and t.broken is None]
        try:
            await self._go_live(ready, now)
        except (OperationFailed, plan.NotOurs) as exc:
            await self._fall_back(tenants, str(exc))
            return
        ROUNDS.labels(mode="incremental").inc()
        await self._record(tenants, [])

    async def _go_live(self, ready: list[Tenant], now: datetime) -> None:
        """Live dialplan from what it was to what the files say (a moved number routes
        once the operations are sent), then the pjsip files, then the read-back."""
        shared = set(plan.parse_dialplan(_dialplan_texts(node_files(Carrier.of(self.node)))))
        before = plan.parse_dialplan(t for r in ready for t in _dialplan_texts(r.live_dialplan))
        after = plan.parse_dialplan(t for r in ready for t in _dialplan_texts(r.wanted or {}))
        operations = plan.dialplan_operations(before, after, shared)

        def write_pjsip() -> None:
            for t in ready:
                execute.hand_edited(self.node, t, now, execute.PJSIP)
                self._write(t, execute.write_pjsip_noting_reload)

        if not operations:
            write_pjsip()
            return
        async with Ami(self.node) as ami:
            await execute.run_dialplan(ami, operations)
            write_pjsip()
            problems = await execute.verify_dialplan(ami, operations, before, after, shared)
        if problems:
            raise OperationFailed("not live as written: " + "; ".join(problems[:5]))

    async def _fall_back(self, tenants: list[Tenant], why: str) -> None:
        log.warning("node %s: incremental apply not possible (%s); reloading fully",
                    self.node.name, why)  # fmt: skip
        ROUNDS.labels(mode="fallback").inc()
        await self.full(reload_all=True)

    # --- The full round ---------------------------------------------------------------

    async def full(self, *, reload_all: bool) -> None:
        node = self.node
        by_pbx = {job.pbx_id: job for job in self.jobs}
        tenants = []
        async with self.pool.connection() as conn, conn.transaction():
            for f in await db_config.node_pbxes(conn, node.name):
                t = Tenant(f.pbx, by_pbx.get(f.pbx.id), None, f.written, f.good, f.latest)
                # Only PBXs with a job are rendered; the others must stay as last written.
                if t.job is not None:
                    await self._render(conn, t)
                tenants.append(t)
        changed = self._write_node_files()
        now = self.clock()
        for t in tenants:
            # A hand-edited PBX without a job is rendered again and written with the rest.
            if execute.hand_edited(node, t, now) and t.wanted is None and t.broken is None:
                async with self.pool.connection() as conn:
                    await self._render(conn, t)
        for t in tenants:
            self._write(t, lambda n, t: changed.update(execute.write_pbx(n, t)))
        if reload_all:
            changed |= set(MODULES)
        async with Ami(node) as ami:
            await execute.reload(ami, changed)
            failing = await execute.verify_node(ami, tenants)
            if failing:
                # Put each failing PBX with a job back to what was live, and check again.
                for t in failing:
                    if t.wanted is None:
                        continue
                    t.problems.append("new config did not come up in Asterisk; rolled back")
                    t.problems += files.unreadable(node.output_dir, sorted(t.wanted))
                    execute.restore(node, t)
                await execute.reload(ami, set(MODULES))
                still = await execute.verify_node(ami, tenants)
                for t in still:
                    t.problems.append("still not live after rollback")
                failing = list({id(t): t for t in failing + still}.values())
        await self._record(tenants, failing)


def _dialplan_texts(config: dict[str, str]) -> list[str]:
    return [text for path, text in sorted(config.items()) if kind_of(path) == "dialplan"]
