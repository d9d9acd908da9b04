"""A PBX's apply state: which revision is written, which is live in each part (dialplan,
PJSIP), which was last live in both, and why not if it is not."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from provisioner.db import Conn


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
    router: str | None = None  # with a SIP router: routed or pending
    router_error: str | None = None


async def get(conn: Conn, pbx_id: int) -> ApplyState | None:
    async with conn.cursor(row_factory=class_row(ApplyState)) as cur:
        await cur.execute("SELECT * FROM apply_state WHERE pbx_id = %s", (pbx_id,))
        return await cur.fetchone()


async def set_state(
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
