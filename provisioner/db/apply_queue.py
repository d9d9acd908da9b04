"""The apply queue: which PBXs need their Asterisk config regenerated and applied, and
the jobs a round leases from it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from provisioner.db import Conn, channels

CHANNEL = "apply_queue"


async def request(
    conn: Conn, pbx_id: int, reason: str, now: datetime, *, full_reload: bool = False
) -> None:
    """Ask for an apply of this PBX; coalesces with one already waiting. `full_reload`:
    by a full round (its incremental change did not show up live)."""
    await conn.execute(
        "INSERT INTO apply_queue (pbx_id, reason, requested_at, next_attempt_at, full_reload)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (pbx_id) DO UPDATE SET generation = apply_queue.generation + 1,"
        " reason = EXCLUDED.reason, requested_at = EXCLUDED.requested_at,"
        " next_attempt_at = LEAST(apply_queue.next_attempt_at, EXCLUDED.next_attempt_at),"
        " full_reload = apply_queue.full_reload OR EXCLUDED.full_reload",
        (pbx_id, reason[:1000], now, now, full_reload),
    )
    await channels.notify(conn, CHANNEL)


@dataclass(frozen=True)
class Job:
    pbx_id: int
    generation: int
    attempts: int
    full_reload: bool = False  # its last round failed at Asterisk: retried by a full reload


async def claim_jobs(
    conn: Conn, node: str, now: datetime, lease_until: datetime, limit: int
) -> list[Job]:
    """Lease the due jobs of one node's PBXs; other workers skip them until the lease ends."""
    cur = await conn.execute(
        "UPDATE apply_queue q SET claimed_until = %s FROM ("
        "   SELECT q2.pbx_id FROM apply_queue q2 JOIN pbxes p ON p.id = q2.pbx_id"
        "   WHERE p.node = %s AND q2.next_attempt_at <= %s"
        "     AND (q2.claimed_until IS NULL OR q2.claimed_until < %s)"
        "   ORDER BY q2.requested_at LIMIT %s FOR UPDATE OF q2 SKIP LOCKED"
        " ) due WHERE q.pbx_id = due.pbx_id"
        " RETURNING q.pbx_id, q.generation, q.attempts, q.full_reload",
        (lease_until, node, now, now, limit),
    )
    return sorted((Job(*row) for row in await cur.fetchall()), key=lambda j: j.pbx_id)


async def renew_lease(conn: Conn, pbx_ids: list[int], lease_until: datetime) -> None:
    """Extend the lease of jobs this round holds (a finished job is no longer leased).
    Rows another transaction holds (the round recording them) are skipped, never
    waited for: no lock order to get wrong."""
    await conn.execute(
        "UPDATE apply_queue SET claimed_until = %s WHERE pbx_id IN ("
        "  SELECT pbx_id FROM apply_queue WHERE pbx_id = ANY(%s) AND claimed_until IS NOT NULL"
        "  ORDER BY pbx_id FOR UPDATE SKIP LOCKED)",
        (lease_until, pbx_ids),
    )


async def finish_job(conn: Conn, job: Job) -> None:
    """Done, unless a change came in meanwhile: then the job stays, free for the next round."""
    cur = await conn.execute(
        "DELETE FROM apply_queue WHERE pbx_id = %s AND generation = %s",
        (job.pbx_id, job.generation),
    )
    if cur.rowcount == 0:
        await conn.execute(
            "UPDATE apply_queue SET claimed_until = NULL, attempts = 0, full_reload = false"
            " WHERE pbx_id = %s",
            (job.pbx_id,),
        )


@dataclass(frozen=True)
class WaitingJob:
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    requested_at: datetime  # the newest change it carries


async def waiting_job(conn: Conn, pbx_id: int) -> WaitingJob | None:
    """The PBX's queued apply, if one is waiting."""
    async with conn.cursor(row_factory=class_row(WaitingJob)) as cur:
        await cur.execute(
            "SELECT attempts, next_attempt_at, last_error, requested_at FROM apply_queue"
            " WHERE pbx_id = %s",
            (pbx_id,),
        )
        return await cur.fetchone()


async def retry_job(
    conn: Conn, job: Job, error: str, retry_at: datetime, *, full_reload: bool = False
) -> None:
    await conn.execute(
        "UPDATE apply_queue SET attempts = attempts + 1, last_error = %s, next_attempt_at = %s,"
        " claimed_until = NULL, full_reload = full_reload OR %s WHERE pbx_id = %s",
        (error[:1000], retry_at, full_reload, job.pbx_id),
    )


async def queue_depth(conn: Conn) -> int:
    cur = await conn.execute("SELECT count(*) FROM apply_queue")
    row = await cur.fetchone()
    return int(row[0]) if row else 0
