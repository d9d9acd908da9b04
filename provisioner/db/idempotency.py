"""Idempotency records: the first response to a keyed request, for replay on retry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from provisioner.db import Conn


@dataclass(frozen=True)
class Stored:
    request_hash: bytes
    status: int | None
    content_type: str | None
    body: bytes | None
    sealed: bool = False


async def claim(
    conn: Conn, client: str, key: str, request_hash: bytes, now: datetime
) -> Stored | None:
    """Claim the key for this transaction, or return what an earlier request stored.

    A concurrent request with the same key blocks on the primary key until the first
    one commits (and then sees its response) or rolls back (and then claims it).
    """
    cur = await conn.execute(
        "INSERT INTO idempotency_keys (client, key, request_hash, created_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (client, key, request_hash, now),
    )
    if await cur.fetchone() is not None:
        return None
    cur = await conn.execute(
        "SELECT request_hash, status, content_type, body, sealed FROM idempotency_keys"
        " WHERE client = %s AND key = %s",
        (client, key),
    )
    row = await cur.fetchone()
    assert row is not None
    body = None if row[3] is None else bytes(row[3])
    return Stored(bytes(row[0]), row[1], row[2], body, row[4])


async def store(
    conn: Conn,
    client: str,
    key: str,
    status: int,
    content_type: str,
    body: bytes,
    sealed: bool = False,
) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET status = %s, content_type = %s, body = %s, sealed = %s"
        " WHERE client = %s AND key = %s",
        (status, content_type, body, sealed, client, key),
    )


async def forget_before(conn: Conn, cutoff: datetime) -> int:
    cur = await conn.execute("DELETE FROM idempotency_keys WHERE created_at < %s", (cutoff,))
    return cur.rowcount
