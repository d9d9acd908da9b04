"""Everything a round writes to the database, in one place: one apply state per PBX
(and a revision when its files changed), its job finished or put back for a retry; the
lease of its jobs, renewed while the round runs; a realtime node's rows; a departure
done. Its reads are in `reads.py`. Each write is its own transaction: what it stores is
true once it commits (the rows before Asterisk's cache is expired, the outcome after
Asterisk took it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from provisioner.clock import Clock
from provisioner.db import (
    Conn,
    apply_queue,
    apply_state,
    departures,
    events,
    pjsip_rows,
    revisions,
    rounds,
)
from provisioner.db import router as db_router
from provisioner.db.accounts import Pbx
from provisioner.db.apply_queue import Job
from provisioner.db.pjsip_rows import Fields, Key
from provisioner.db.rounds import Tenant
from provisioner.domain.events import ApplyOutcome
from provisioner.metrics import BROKEN
from provisioner.render.render import digest, redacted

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(minutes=5)


def backoff(job: Job, first_seconds: int) -> timedelta:
    return min(timedelta(seconds=first_seconds * 2 ** min(job.attempts, 10)), MAX_BACKOFF)


@dataclass(frozen=True)
class Outcome:
    """What a round did for one PBX, as the executor hands it to the recorder."""

    tenant: Tenant
    # Its files now on disk, as written (secrets in them); None: the round did not touch
    # them (a PBX without a job in a full round, or one that could not be rendered).
    on_disk: dict[str, str] | None
    attempted: dict[str, str] | None = None  # files that did not come up, rolled back
    notes: tuple[str, ...] = ()  # what the engineer should know (set aside, rolled back)
    failed: bool = False  # not live as it should be
    broken: str | None = None  # could not be rendered or written: waits for a retry
    pjsip_due: bool = False  # dialplan live; its PJSIP objects wait for the reload


@dataclass(frozen=True)
class Stopped:
    """A round that stopped (Asterisk away, or anything unexpected) before its outcomes:
    every job of it waits for a retry, by full reload, as Asterisk may hold part of the
    change."""

    jobs: list[Job]
    error: str


async def record(
    pool: AsyncConnectionPool, done: list[Outcome] | Stopped, now: datetime, retry_seconds: int
) -> None:
    """What the round did, in one transaction: its outcomes (the node's PJSIP reloader
    is woken for PBXs whose objects wait for it, and the router step for numbers now
    live here), or its jobs put back when it stopped."""
    async with pool.connection() as conn, conn.transaction():
        if isinstance(done, Stopped):
            await _record_stopped(conn, done, now, retry_seconds)
            return
        await _record_outcomes(conn, done, now, retry_seconds)
        if any(o.pjsip_due and o.broken is None for o in done):
            await rounds.notify_pjsip_due(conn)
        # Numbers now live here may be switched on the SIP router (router/sync.py).
        await db_router.notify_due(conn)


async def _record_outcomes(
    conn: Conn, outcomes: list[Outcome], now: datetime, retry_seconds: int
) -> None:
    for o in outcomes:
        t = o.tenant
        if o.broken is not None:
            await _record_broken(conn, t, o.broken, now, retry_seconds)
            continue
        if o.on_disk is None:
            if o.notes or o.failed:
                await apply_state.set_state(
                    conn, t.pbx_id, "failed", now, error="; ".join(o.notes or ("not live",))
                )
            continue
        revision = await _store_revision(conn, o, now)
        error = "; ".join(o.notes) or None
        if o.failed:
            await apply_state.set_state(
                conn, t.pbx_id, "failed", now, revision=revision, error=error
            )
            await outcome(conn, t.pbx, "failed", revision, error, now)
        elif o.pjsip_due:
            # Routing (the dialplan) is live now; its PJSIP objects come with the node's
            # next coalesced reload (apply/pjsip.py), which makes it applied.
            await apply_state.set_state(
                conn, t.pbx_id, "pending", now, revision=revision,
                dialplan_revision=revision, error=error,
            )  # fmt: skip
        else:
            # A repaired hand edit ends applied too, with the note of what was set aside.
            await apply_state.set_state(
                conn, t.pbx_id, "applied", now, revision=revision,
                good_revision=revision, error=error,
            )  # fmt: skip
            await outcome(conn, t.pbx, "applied", revision, error, now)
        if t.job is not None:
            await apply_queue.finish_job(conn, t.job)


async def outcome(
    conn: Conn, pbx: Pbx, state: str, revision: int | None, error: str | None, now: datetime
) -> None:
    """An apply outcome in the event feed (webhooks): applied with the revision now live
    in both parts, or failed with the reason."""
    result = ApplyOutcome(
        customer=pbx.customer, node=pbx.node, revision=revision,
        removed=pbx.removed_at is not None, error=error,
    )  # fmt: skip
    await events.emit(conn, f"apply.{state}", result, now)


async def _store_revision(conn: Conn, o: Outcome, now: datetime) -> int | None:
    """A new revision when what is on disk now differs from the latest one (redacted);
    returns the PBX's revision: the new one, else the latest, whose files are what is on
    disk (a PBX moved to a node where it renders the same, as when every node has the
    same carrier, is live there at its latest revision: its apply state says so, or the
    router would never switch to it). A rolled-back attempt is kept too, for diffs; the
    PBX's revision is then the attempted one."""
    assert o.on_disk is not None
    written, revision = o.tenant.written, o.tenant.latest
    if o.attempted is not None and redacted(o.attempted) != written:
        written = redacted(o.attempted)
        tried = await revisions.add_revision(conn, o.tenant.pbx_id, digest(written), written, now)
        revision = tried.revision
    shown = redacted(o.on_disk)
    if shown != written:
        stored = await revisions.add_revision(conn, o.tenant.pbx_id, digest(shown), shown, now)
        revision = revision if o.failed else stored.revision
    return revision


async def _record_broken(
    conn: Conn, t: Tenant, broken: str, now: datetime, retry_seconds: int
) -> None:
    """Failed with the reason; its job waits (backoff) for a retry or a newer change."""
    BROKEN.inc()
    await apply_state.set_state(conn, t.pbx_id, "failed", now, error=broken[:1000])
    await outcome(conn, t.pbx, "failed", None, broken[:1000], now)
    if t.job is not None:
        await apply_queue.retry_job(conn, t.job, broken, now + backoff(t.job, retry_seconds))


async def _record_stopped(conn: Conn, stopped: Stopped, now: datetime, retry_seconds: int) -> None:
    for job in stopped.jobs:
        retry_at = now + backoff(job, retry_seconds)
        await apply_queue.retry_job(conn, job, stopped.error, retry_at, full_reload=True)
        await apply_state.set_state(
            conn, job.pbx_id, "pending", now, error=f"waiting: {stopped.error}"
        )


@asynccontextmanager
async def leased(
    pool: AsyncConnectionPool, jobs: list[Job], clock: Clock, lease: timedelta
) -> AsyncIterator[None]:
    """Keep the jobs leased while the block runs (a slow reload must not let another
    instance take them); the renewing stops with the block."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease.total_seconds() / 3)
            try:
                async with pool.connection() as conn:
                    await apply_queue.renew_lease(conn, [j.pbx_id for j in jobs], clock() + lease)
            except Exception as exc:  # the round itself will meet the same trouble
                log.warning("could not renew the lease of %d apply jobs: %s", len(jobs), exc)

    renewing = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)


async def store_rows(
    pool: AsyncConnectionPool,
    node: str,
    objects: dict[int | None, dict[Key, Fields]],
    now: datetime,
) -> set[Key]:
    """A realtime node's rows: each PBX's (None: the node's own) made these objects, one
    transaction per PBX; the keys that changed, for Asterisk's cache to forget."""
    changed: set[Key] = set()
    async with pool.connection() as conn:
        for pbx_id, wanted in objects.items():
            async with conn.transaction():
                changed |= await pjsip_rows.replace(conn, node, pbx_id, wanted, now)
    return changed


async def left(pool: AsyncConnectionPool, pbx_id: int) -> None:
    """The PBX is gone from the node it moved away from."""
    async with pool.connection() as conn:
        await departures.left(conn, pbx_id)
