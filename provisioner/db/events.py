"""The event feed (GET /v1/events, webhooks) and each webhook endpoint's cursor.

Readers go by `position`, given out at COMMIT in commit order (migration 0010 says how
and why), never by `id`, which is taken at INSERT: a cursor over ids skips for good an
event whose transaction committed after one with a higher id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from provisioner.db import Conn, channels
from provisioner.domain.events import Payload, data_of

CHANNEL = "events"


@dataclass(frozen=True)
class Event:
    id: int
    position: int  # the cursor: in commit order, set in the writer's COMMIT
    event_id: str
    type: str
    at: datetime
    data: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The body of its webhook and its entry in GET /v1/events: the same JSON."""
        return {
            "id": self.event_id,
            "cursor": str(self.position),
            "type": self.type,
            "timestamp": self.at.isoformat().replace("+00:00", "Z"),
            "data": self.data,
        }


async def emit(conn: Conn, type_: str, payload: Payload, now: datetime) -> None:
    """Record an event in the caller's transaction: it exists exactly if the change does.
    Its type and payload are one of domain/events.py's."""
    await conn.execute(
        "INSERT INTO events (event_id, type, at, data) VALUES (%s, %s, %s, %s)",
        (f"evt_{uuid.uuid4().hex}", type_, now, Jsonb(data_of(type_, payload))),
    )
    await channels.notify(conn, CHANNEL)


async def after(conn: Conn, cursor: int, limit: int) -> list[Event]:
    async with conn.cursor(row_factory=class_row(Event)) as cur:
        await cur.execute(
            "SELECT id, position, event_id, type, at, data FROM events"
            " WHERE position > %s ORDER BY position LIMIT %s",
            (cursor, limit),
        )
        return await cur.fetchall()


@dataclass(frozen=True)
class Cursor:
    url: str
    last_event: int  # the position delivered up to
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


async def cursor(conn: Conn, url: str, now: datetime) -> Cursor:
    """The endpoint's cursor, locked for this delivery pass; a new endpoint starts at
    the newest event (its history is in GET /v1/events)."""
    await conn.execute(
        "INSERT INTO webhook_cursors (url, last_event, next_attempt_at)"
        " SELECT %s, coalesce(max(position), 0), %s FROM events ON CONFLICT (url) DO NOTHING",
        (url, now),
    )
    async with conn.cursor(row_factory=class_row(Cursor)) as cur:
        await cur.execute("SELECT * FROM webhook_cursors WHERE url = %s FOR UPDATE", (url,))
        row = await cur.fetchone()
    assert row is not None
    return row


async def delivered(conn: Conn, url: str, event: int) -> None:
    await conn.execute(
        "UPDATE webhook_cursors SET last_event = %s, attempts = 0, last_error = NULL"
        " WHERE url = %s",
        (event, url),
    )


async def failed(conn: Conn, url: str, error: str, retry_at: datetime) -> None:
    await conn.execute(
        "UPDATE webhook_cursors SET attempts = attempts + 1, last_error = %s,"
        " next_attempt_at = %s WHERE url = %s",
        (error[:1000], retry_at, url),
    )
