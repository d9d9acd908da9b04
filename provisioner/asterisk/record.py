"""Storing the outcome of a round: one apply state per PBX (and a revision when its
files changed), its job finished or put back for a retry."""

from __future__ import annotations

from datetime import datetime, timedelta

from provisioner.asterisk.execute import Tenant
from provisioner.db import Conn, events
from provisioner.db import config as db_config
from provisioner.db.accounts import Pbx
from provisioner.db.config import Job
from provisioner.metrics import BROKEN
from provisioner.render.render import digest, redacted

MAX_BACKOFF = timedelta(minutes=5)


def backoff(job: Job, first_seconds: int) -> timedelta:
    return min(timedelta(seconds=first_seconds * 2 ** min(job.attempts, 10)), MAX_BACKOFF)


async def record_round(
    conn: Conn, tenants: list[Tenant], failing: list[Tenant], now: datetime, retry_seconds: int
) -> None:
    for t in tenants:
        if t.broken is not None:
            await _record_broken(conn, t, now, retry_seconds)
            continue
        broken = t in failing
        if t.wanted is None:
            if t.problems or broken:
                await db_config.set_apply_state(
                    conn, t.pbx_id, "failed", now, error="; ".join(t.problems or ["not live"])
                )
            continue
        await _store_revision(conn, t, now, keep_number=broken)
        error = "; ".join(t.problems) or None
        if broken:
            await db_config.set_apply_state(
                conn, t.pbx_id, "failed", now, revision=t.revision, error=error
            )
            await outcome(conn, t.pbx, "failed", t.revision, error, now)
        elif t.pjsip_due:
            # Routing (the dialplan) is live now; its PJSIP objects come with the node's
            # next coalesced reload (asterisk/pjsip.py), which makes it applied.
            await db_config.set_apply_state(
                conn, t.pbx_id, "pending", now, revision=t.revision,
                dialplan_revision=t.revision, error=error,
            )  # fmt: skip
        else:
            # A repaired hand edit ends applied too, with the note of what was set aside.
            await db_config.set_apply_state(
                conn, t.pbx_id, "applied", now, revision=t.revision,
                good_revision=t.revision, error=error,
            )  # fmt: skip
            await outcome(conn, t.pbx, "applied", t.revision, error, now)
        if t.job is not None:
            await db_config.finish_job(conn, t.job)


async def outcome(
    conn: Conn, pbx: Pbx, state: str, revision: int | None, error: str | None, now: datetime
) -> None:
    """An apply outcome in the event feed (webhooks): applied with the revision now live
    in both parts, or failed with the reason."""
    data = {"customer": pbx.customer, "node": pbx.node, "revision": revision,
            "removed": pbx.removed_at is not None, "error": error}  # fmt: skip
    await events.emit(conn, f"apply.{state}", data, now)


async def _store_revision(conn: Conn, t: Tenant, now: datetime, *, keep_number: bool) -> None:
    """A new revision when what is on disk now differs from the latest one (redacted).
    A rolled-back attempt is kept too, for diffs; the PBX's revision then stays the
    attempted one (`keep_number`)."""
    assert t.wanted is not None
    if t.attempted is not None and redacted(t.attempted) != t.written:
        tried = redacted(t.attempted)
        revision = await db_config.add_revision(conn, t.pbx_id, digest(tried), tried, now)
        t.revision = revision.revision
        t.written = tried
    shown = redacted(t.wanted)
    if shown != t.written:
        rev = await db_config.add_revision(conn, t.pbx_id, digest(shown), shown, now)
        t.revision = t.revision if keep_number else rev.revision


async def _record_broken(conn: Conn, t: Tenant, now: datetime, retry_seconds: int) -> None:
    """Failed with the reason; its job waits (backoff) for a retry or a newer change."""
    assert t.broken is not None
    BROKEN.inc()
    await db_config.set_apply_state(conn, t.pbx_id, "failed", now, error=t.broken[:1000])
    await outcome(conn, t.pbx, "failed", t.revision, t.broken[:1000], now)
    if t.job is not None:
        await db_config.retry_job(conn, t.job, t.broken, now + backoff(t.job, retry_seconds))


async def record_retry(
    conn: Conn, jobs: list[Job], error: str, now: datetime, retry_seconds: int, *, full: bool
) -> None:
    """The whole round stopped (Asterisk away, or anything unexpected): every job of it
    waits for a retry, by full reload when Asterisk may hold part of the change."""
    for job in jobs:
        await db_config.retry_job(
            conn, job, error, now + backoff(job, retry_seconds), full_reload=full
        )
        await db_config.set_apply_state(conn, job.pbx_id, "pending", now, error=f"waiting: {error}")
