"""Revisions of generated config, apply state, and claiming apply jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from provisioner.db import Conn
from provisioner.db.accounts import OfPbx, Pbx


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
    dialplan_revision: int | None
    pjsip_revision: int | None


@dataclass(frozen=True)
class Job:
    pbx_id: int
    generation: int
    attempts: int
    full_reload: bool = False  # its last round failed at Asterisk: retried by a full reload


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
    dialplan_revision: int | None = None,
    pjsip_revision: int | None = None,
    error: str | None = None,
) -> None:
    """Set the state; a revision left None keeps what was there. A good revision (both
    parts verified live) is live in each part too."""
    dialplan_revision = dialplan_revision or good_revision
    pjsip_revision = pjsip_revision or good_revision
    await conn.execute(
        "INSERT INTO apply_state (pbx_id, state, revision, good_revision, updated_at, error,"
        "                         dialplan_revision, pjsip_revision)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (pbx_id) DO UPDATE SET"
        " state = EXCLUDED.state,"
        " revision = coalesce(EXCLUDED.revision, apply_state.revision),"
        " good_revision = coalesce(EXCLUDED.good_revision, apply_state.good_revision),"
        " dialplan_revision = coalesce(EXCLUDED.dialplan_revision,"
        "                              apply_state.dialplan_revision),"
        " pjsip_revision = coalesce(EXCLUDED.pjsip_revision, apply_state.pjsip_revision),"
        " updated_at = EXCLUDED.updated_at, error = EXCLUDED.error",
        (pbx_id, state, revision, good_revision, now, error, dialplan_revision, pjsip_revision),
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


async def waiting_job(conn: Conn, pbx_id: int) -> WaitingJob | None:
    """The PBX's queued apply, if one is waiting."""
    async with conn.cursor(row_factory=class_row(WaitingJob)) as cur:
        await cur.execute(
            "SELECT attempts, next_attempt_at, last_error FROM apply_queue WHERE pbx_id = %s",
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


async def try_node_lock(conn: Conn, node: str, role: str = "apply") -> bool:
    """One applier (and one PJSIP reloader) per node across all instances: a session
    advisory lock on the node and role."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s || ':' || %s))", (role, node))
    row = await cur.fetchone()
    return bool(row and row[0])


async def wait_node_lock(conn: Conn, node: str, role: str = "apply") -> None:
    """As try_node_lock, but waits for the holder (a round) to finish."""
    await conn.execute("SELECT pg_advisory_lock(hashtext(%s || ':' || %s))", (role, node))


async def node_unlock(conn: Conn, node: str, role: str = "apply") -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtext(%s || ':' || %s))", (role, node))


async def queue_depth(conn: Conn) -> int:
    cur = await conn.execute("SELECT count(*) FROM apply_queue")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


# Every column of a Pbx row, in its field order: the queries below read a PBX and more
# in one row, and build the Pbx from the first PBX_WIDTH values.
_PBX = (
    "p.id, p.customer, p.slug, p.created_at, p.node, p.removed_at, p.leaving_node,"
    " p.leaving_revision"
)
PBX_WIDTH = 8
# The latest revision written and the last one live in both parts, of PBX p.
_REVISIONS = (
    " LEFT JOIN LATERAL (SELECT revision, files FROM config_revisions r"
    "                    WHERE r.pbx_id = p.id ORDER BY revision DESC LIMIT 1) latest"
    "   ON true"
    " LEFT JOIN apply_state s ON s.pbx_id = p.id"
    " LEFT JOIN config_revisions good"
    "   ON good.pbx_id = p.id AND good.revision = s.good_revision"
)


def _pbx(row: tuple[Any, ...]) -> Pbx:
    return Pbx(*row[:PBX_WIDTH])


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
        f"SELECT {_PBX}, latest.revision, latest.files, good.files FROM pbxes p{_REVISIONS}"
        " WHERE p.node = %s ORDER BY p.id",
        (node,),
    )
    n = PBX_WIDTH
    return [NodePbx(_pbx(r), r[n], r[n + 1] or {}, r[n + 2]) for r in await cur.fetchall()]


async def node_written(conn: Conn, node: str) -> list[tuple[Pbx, dict[str, str]]]:
    """Every PBX of the node with the files of its latest revision only (what must be on
    disk): the check before a res_pjsip reload, which holds the node's apply lock."""
    cur = await conn.execute(
        f"SELECT {_PBX}, r.files FROM pbxes p"
        " LEFT JOIN LATERAL (SELECT files FROM config_revisions r"
        "                    WHERE r.pbx_id = p.id ORDER BY revision DESC LIMIT 1) r ON true"
        " WHERE p.node = %s ORDER BY p.id",
        (node,),
    )
    return [(_pbx(r), r[PBX_WIDTH] or {}) for r in await cur.fetchall()]


@dataclass(frozen=True)
class RoundPbx:
    """A PBX with a job in an incremental round, with what is live of it."""

    pbx: Pbx
    latest: int | None
    written: dict[str, str]  # files of the latest revision (redacted)
    good: dict[str, str] | None  # files of the last revision live in both parts
    live_dialplan: dict[str, str]  # files of the revision whose dialplan is live
    pjsip_live: bool  # the latest revision's PJSIP objects are live


async def round_pbxes(conn: Conn, pbx_ids: list[int]) -> list[RoundPbx]:
    """Only the PBXs with jobs: a round's reads do not grow with the node."""
    cur = await conn.execute(
        f"SELECT {_PBX}, latest.revision, latest.files, good.files, dial.files,"
        "       s.pjsip_revision IS NOT DISTINCT FROM latest.revision"
        f" FROM pbxes p{_REVISIONS}"
        " LEFT JOIN config_revisions dial"
        "   ON dial.pbx_id = p.id AND dial.revision = s.dialplan_revision"
        " WHERE p.id = ANY(%s) ORDER BY p.id",
        (pbx_ids,),
    )
    n = PBX_WIDTH
    return [
        RoundPbx(_pbx(r), r[n], r[n + 1] or {}, r[n + 2], r[n + 3] or {}, bool(r[n + 4]))
        for r in await cur.fetchall()
    ]


@dataclass(frozen=True)
class PjsipPending(OfPbx):
    """A PBX whose latest revision's PJSIP objects wait for a reload of res_pjsip."""

    pbx: Pbx
    revision: int
    files: dict[str, str]  # of that revision (redacted)
    live: dict[str, str]  # of the revision whose PJSIP objects are live (redacted)
    since: datetime  # when its dialplan went live


PJSIP_CHANNEL = "pjsip_due"


async def notify_pjsip_due(conn: Conn) -> None:
    """Wake the nodes' PJSIP reloaders when this transaction commits."""
    await conn.execute(f"NOTIFY {PJSIP_CHANNEL}")


async def pjsip_pending(conn: Conn, node: str) -> list[PjsipPending]:
    cur = await conn.execute(
        f"SELECT {_PBX}, s.revision, r.files, live.files, s.updated_at FROM apply_state s"
        " JOIN pbxes p ON p.id = s.pbx_id"
        " JOIN config_revisions r ON r.pbx_id = s.pbx_id AND r.revision = s.revision"
        " LEFT JOIN config_revisions live"
        "   ON live.pbx_id = s.pbx_id AND live.revision = s.pjsip_revision"
        " WHERE p.node = %s AND s.state = 'pending'"
        "   AND s.dialplan_revision = s.revision"
        "   AND s.pjsip_revision IS DISTINCT FROM s.revision"
        " ORDER BY p.id",
        (node,),
    )
    n = PBX_WIDTH
    return [
        PjsipPending(_pbx(r), r[n], r[n + 1], r[n + 2] or {}, r[n + 3])
        for r in await cur.fetchall()
    ]


async def pjsip_live(conn: Conn, pbx_id: int, revision: int, now: datetime) -> bool:
    """The revision's PJSIP objects are live; if its dialplan is too (and no newer
    revision was written meanwhile), the PBX is applied. Returns whether it is."""
    cur = await conn.execute(
        "UPDATE apply_state SET pjsip_revision = %s, updated_at = %s,"
        " state = CASE WHEN dialplan_revision = %s THEN 'applied' ELSE state END,"
        " good_revision = CASE WHEN dialplan_revision = %s THEN %s ELSE good_revision END"
        " WHERE pbx_id = %s AND revision = %s AND state = 'pending'"
        " RETURNING state = 'applied'",
        (revision, now, revision, revision, revision, pbx_id, revision),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class Leaving:
    """A PBX that moved away from a node and is live on its new one: the old node
    removes the files it has of it (`files`, redacted: only paths and names count)."""

    pbx: Pbx
    files: dict[str, str]


async def leaving(conn: Conn, node: str) -> list[Leaving]:
    cur = await conn.execute(
        f"SELECT {_PBX}, r.files FROM pbxes p JOIN apply_state s ON s.pbx_id = p.id"
        " LEFT JOIN config_revisions r ON r.pbx_id = p.id AND r.revision = p.leaving_revision"
        " WHERE p.leaving_node = %s AND s.state = 'applied' AND s.good_revision IS NOT NULL"
        " ORDER BY p.id",
        (node,),
    )
    return [Leaving(_pbx(r), r[PBX_WIDTH] or {}) for r in await cur.fetchall()]


async def left(conn: Conn, pbx_id: int) -> None:
    await conn.execute(
        "UPDATE pbxes SET leaving_node = NULL, leaving_revision = NULL WHERE id = %s", (pbx_id,)
    )
