"""Assignments of blocks to another account's PBX, and their audit trail."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from psycopg import errors
from psycopg.rows import class_row

from provisioner.db import Conn


@dataclass(frozen=True)
class Assignment:
    id: uuid.UUID
    block_id: str
    owner: str
    target: str
    target_pbx_id: int
    state: str
    owner_token_hash: bytes
    target_token_hash: bytes
    owner_confirmed_at: datetime | None
    target_confirmed_at: datetime | None
    created_at: datetime
    expires_at: datetime
    activated_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class Event:
    id: int
    assignment_id: uuid.UUID
    at: datetime
    action: str
    old_state: str | None
    new_state: str
    actor: str
    acting_customer: str | None
    request_id: str | None


class AlreadyLive(Exception):
    """The block has a pending or active assignment already."""


async def insert(
    conn: Conn,
    *,
    block_id: str,
    owner: str,
    target: str,
    target_pbx_id: int,
    owner_token_hash: bytes,
    target_token_hash: bytes,
    now: datetime,
    expires_at: datetime,
) -> Assignment:
    try:
        async with conn.transaction(), conn.cursor(row_factory=class_row(Assignment)) as cur:
            await cur.execute(
                "INSERT INTO assignments (id, block_id, owner, target, target_pbx_id, state,"
                " owner_token_hash, target_token_hash, created_at, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, 'pending', %s, %s, %s, %s) RETURNING *",
                (
                    uuid.uuid4(),
                    block_id,
                    owner,
                    target,
                    target_pbx_id,
                    owner_token_hash,
                    target_token_hash,
                    now,
                    expires_at,
                ),
            )
            row = await cur.fetchone()
    except errors.UniqueViolation:
        raise AlreadyLive from None
    assert row is not None
    return row


async def get(conn: Conn, assignment_id: uuid.UUID, *, lock: bool = False) -> Assignment | None:
    query = "SELECT * FROM assignments WHERE id = %s" + (" FOR NO KEY UPDATE" if lock else "")
    async with conn.cursor(row_factory=class_row(Assignment)) as cur:
        await cur.execute(query, (assignment_id,))
        return await cur.fetchone()


async def live_for_block(conn: Conn, block_id: str, *, lock: bool = False) -> Assignment | None:
    """The pending or active assignment of a block, if any."""
    query = "SELECT * FROM assignments WHERE block_id = %s AND state IN ('pending', 'active')" + (
        " FOR NO KEY UPDATE" if lock else ""
    )
    async with conn.cursor(row_factory=class_row(Assignment)) as cur:
        await cur.execute(query, (block_id,))
        return await cur.fetchone()


async def latest_for_block(conn: Conn, block_id: str) -> Assignment | None:
    """The live assignment, else the most recent ended one (what the portal shows)."""
    async with conn.cursor(row_factory=class_row(Assignment)) as cur:
        await cur.execute(
            "SELECT * FROM assignments WHERE block_id = %s"
            " ORDER BY (state IN ('pending', 'active')) DESC, created_at DESC LIMIT 1",
            (block_id,),
        )
        return await cur.fetchone()


async def by_token_hash(conn: Conn, token_hash: bytes, *, lock: bool = False) -> Assignment | None:
    query = "SELECT * FROM assignments WHERE owner_token_hash = %s OR target_token_hash = %s" + (
        " FOR NO KEY UPDATE" if lock else ""
    )
    async with conn.cursor(row_factory=class_row(Assignment)) as cur:
        await cur.execute(query, (token_hash, token_hash))
        return await cur.fetchone()


async def update(conn: Conn, assignment: Assignment) -> Assignment:
    """Write back the mutable fields of an assignment the caller holds locked."""
    async with conn.cursor(row_factory=class_row(Assignment)) as cur:
        await cur.execute(
            "UPDATE assignments SET state = %s, owner_confirmed_at = %s,"
            " target_confirmed_at = %s, activated_at = %s, ended_at = %s"
            " WHERE id = %s RETURNING *",
            (
                assignment.state,
                assignment.owner_confirmed_at,
                assignment.target_confirmed_at,
                assignment.activated_at,
                assignment.ended_at,
                assignment.id,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def due_for_expiry(conn: Conn, now: datetime, limit: int = 100) -> list[uuid.UUID]:
    """Pending assignments past their window, skipping those another instance holds."""
    cur = await conn.execute(
        "SELECT id FROM assignments WHERE state = 'pending' AND expires_at <= %s"
        " ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (now, limit),
    )
    return [row[0] for row in await cur.fetchall()]


async def add_event(
    conn: Conn,
    assignment_id: uuid.UUID,
    *,
    at: datetime,
    action: str,
    old_state: str | None,
    new_state: str,
    actor: str,
    acting_customer: str | None,
    request_id: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO assignment_events (assignment_id, at, action, old_state, new_state, actor,"
        " acting_customer, request_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (assignment_id, at, action, old_state, new_state, actor, acting_customer, request_id),
    )


async def events(conn: Conn, assignment_id: uuid.UUID) -> list[Event]:
    async with conn.cursor(row_factory=class_row(Event)) as cur:
        await cur.execute(
            "SELECT * FROM assignment_events WHERE assignment_id = %s ORDER BY id",
            (assignment_id,),
        )
        return await cur.fetchall()
