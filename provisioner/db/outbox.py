"""The mail outbox: mails written with the change that causes them, sent after commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from provisioner.db import Conn, channels

CHANNEL = "mail_outbox"


@dataclass(frozen=True)
class OutboxMail:
    id: int
    message_id: str
    recipient: str
    subject: str
    body: str
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None


async def enqueue(
    conn: Conn, *, message_id: str, recipient: str, subject: str, body: str, now: datetime
) -> None:
    await conn.execute(
        "INSERT INTO mail_outbox (message_id, recipient, subject, body, created_at,"
        " next_attempt_at) VALUES (%s, %s, %s, %s, %s, %s)",
        (message_id, recipient, subject, body, now, now),
    )
    # Delivered at commit, so the sender wakes only for mails that really exist.
    await channels.notify(conn, CHANNEL)


async def claim_next(conn: Conn, now: datetime) -> OutboxMail | None:
    """Lock the oldest due mail for this transaction; other instances skip it."""
    async with conn.cursor(row_factory=class_row(OutboxMail)) as cur:
        await cur.execute(
            "SELECT * FROM mail_outbox WHERE sent_at IS NULL AND next_attempt_at <= %s"
            " ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
            (now,),
        )
        return await cur.fetchone()


async def mark_sent(conn: Conn, mail_id: int, now: datetime) -> None:
    await conn.execute(
        "UPDATE mail_outbox SET sent_at = %s, attempts = attempts + 1, last_error = NULL"
        " WHERE id = %s",
        (now, mail_id),
    )


async def mark_failed(conn: Conn, mail_id: int, error: str, retry_at: datetime) -> None:
    await conn.execute(
        "UPDATE mail_outbox SET attempts = attempts + 1, last_error = %s, next_attempt_at = %s"
        " WHERE id = %s",
        (error[:1000], retry_at, mail_id),
    )
