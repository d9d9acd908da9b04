"""Revisions of generated config, apply state, and claiming apply jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from provisioner.db import Conn
from provisioner.db.accounts import Pbx


@dataclass(frozen=True)
class Revision:
    pbx_id: int
    revision: int
    sha256: str
    files: dict[str, str]
    created_at: datetime


@dataclass(frozen=True)
class ApplyState:
    pbx_id: int
    state: str
    revision: int | None
    good_revision: int | None
    updated_at: datetime
    error: str | None


@dataclass(frozen=True)
class Job:
    pbx_id: int
    generation: int
    attempts: int


async def latest_revision(conn: Conn, pbx_id: int) -> Revision | None:
    async with conn.cursor(row_factory=class_row(Revision)) as cur:
        await cur.execute(
            "SELECT * FROM config_revisions WHERE pbx_id = %s ORDER BY revision DESC LIMIT 1",
            (pbx_id,),
        )
        return await cur.fetchone()


async def revision(conn: Conn, pbx_id: int, number: int) -> Revision | None:
    async with conn.cursor(row_factory=class_row(Revision)) as cur:
        await cur.execute(
            "SELECT * FROM config_revisions WHERE pbx_id = %s AND revision = %s",
            (pbx_id, number),
        )
        return await cur.fetchone()


async def add_revision(
    conn: Conn, pbx_id: int, sha256: str, files: dict[str, str], now: datetime
) -> Revision:
    async with conn.cursor(row_factory=class_row(Revision)) as cur:
        await cur.execute(
            "INSERT INTO config_revisions (pbx_id, revision, sha256, files, created_at)"
            " SELECT %s, coalesce(max(revision), 0) + 1, %s, %s, %s"
            " FROM config_revisions WHERE pbx_id = %s RETURNING *",
            (pbx_id, sha256, Jsonb(files), now, pbx_id),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def apply_state(conn: Conn, pbx_id: int) -> ApplyState | None:
    async with conn.cursor(row_factory=class_row(ApplyState)) as cur:
        await cur.execute("SELECT * FROM apply_state WHERE pbx_id = %s", (pbx_id,))
        return await cur.fetchone()


async def set_apply_state(
    conn: Conn,
    pbx_id: int,
    state: str,
    now: datetime,
    *,
    revision: int | None = None,
    good_revision: int | None = None,
    error: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO apply_state (pbx_id, state, revision, good_revision, updated_at, error)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (pbx_id) DO UPDATE SET"
        " state = EXCLUDED.state,"
        " revision = coalesce(EXCLUDED.revision, apply_state.revision),"
        " good_revision = coalesce(EXCLUDED.good_revision, apply_state.good_revision),"
        " updated_at = EXCLUDED.updated_at, error = EXCLUDED.error",
        (pbx_id, state, revision, good_revision, now, error),
    )


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
        " RETURNING q.pbx_id, q.generation, q.attempts",
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
            "UPDATE apply_queue SET claimed_until = NULL, attempts = 0 WHERE pbx_id = %s",
            (job.pbx_id,),
        )


@dataclass(frozen=True)
class WaitingJob:
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


async def waiting_job(conn: Conn, pbx_id: int) -> WaitingJob | None:
    """The PBX's queued apply, if one is waiting."""
    async with conn.cursor(row_factory=class_row(WaitingJob)) as cur:
        await cur.execute(
            "SELECT attempts, next_attempt_at, last_error FROM apply_queue WHERE pbx_id = %s",
            (pbx_id,),
        )
        return await cur.fetchone()


async def retry_job(conn: Conn, job: Job, error: str, retry_at: datetime) -> None:
    await conn.execute(
        "UPDATE apply_queue SET attempts = attempts + 1, last_error = %s, next_attempt_at = %s,"
        " claimed_until = NULL WHERE pbx_id = %s",
        (error[:1000], retry_at, job.pbx_id),
    )


async def try_node_lock(conn: Conn, node: str) -> bool:
    """One applier per node across all instances: a session advisory lock on the node."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext('apply:' || %s))", (node,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def node_unlock(conn: Conn, node: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtext('apply:' || %s))", (node,))


async def queue_depth(conn: Conn) -> int:
    cur = await conn.execute("SELECT count(*) FROM apply_queue")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class NodePbx:
    """A PBX of a node with what an apply round compares against."""

    pbx: Pbx
    latest: int | None  # the latest revision written
    written: dict[str, str]  # its files (what should be on disk)
    good: dict[str, str] | None  # the files of the last revision verified live


async def node_pbxes(conn: Conn, node: str) -> list[NodePbx]:
    """Every PBX of the node with its latest and last good revision, in one query (a
    round looks at all of them, so this is on the apply path)."""
    cur = await conn.execute(
        "SELECT p.id, p.customer, p.slug, p.created_at, p.node,"
        "       latest.revision, latest.files, good.files"
        " FROM pbxes p"
        " LEFT JOIN LATERAL (SELECT revision, files FROM config_revisions r"
        "                    WHERE r.pbx_id = p.id ORDER BY revision DESC LIMIT 1) latest"
        "   ON true"
        " LEFT JOIN apply_state s ON s.pbx_id = p.id"
        " LEFT JOIN config_revisions good"
        "   ON good.pbx_id = p.id AND good.revision = s.good_revision"
        " WHERE p.node = %s ORDER BY p.id",
        (node,),
    )
    return [NodePbx(Pbx(*row[:5]), row[5], row[6] or {}, row[7]) for row in await cur.fetchall()]
