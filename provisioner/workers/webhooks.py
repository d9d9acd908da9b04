"""Pushing events to the portal's webhook endpoints (Standard Webhooks).

Each endpoint has a cursor in PostgreSQL: events are sent in id order (so in order per
assignment and per PBX), one at a time, and the cursor moves only after a 2xx. A
failure keeps the cursor and retries with backoff; a crash between the POST and the
cursor update sends that event again, with the same `webhook-id` (at least once: the
receiver drops what it has seen). Events themselves were written in the transaction of
the change they describe, so none is lost over a restart of anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta

import aiohttp
from psycopg_pool import AsyncConnectionPool

from provisioner.clock import Clock
from provisioner.db import events as db_events
from provisioner.db.events import Event
from provisioner.settings import Webhook

log = logging.getLogger(__name__)

TIMEOUT = aiohttp.ClientTimeout(total=10)
MAX_BACKOFF = timedelta(minutes=5)
BATCH = 100
PASS_SECONDS = 20  # one pass holds its cursor (and a transaction) at most about this long


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` of Standard Webhooks: v1, HMAC-SHA256 over
    "<id>.<timestamp>.<body>" with the key in the secret (base64 after `whsec_`)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def backoff(attempts: int) -> timedelta:
    """1 s, 2 s, 4 s, ... up to 5 minutes between attempts."""
    return min(timedelta(seconds=2 ** min(attempts, 10)), MAX_BACKOFF)


async def deliver_due(pool: AsyncConnectionPool, hooks: tuple[Webhook, ...], clock: Clock) -> int:
    """Send what each endpoint has not had yet; returns how many events went out."""
    sent = 0
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for hook in hooks:
            sent += await _deliver(pool, session, hook, clock)
    return sent


async def _deliver(
    pool: AsyncConnectionPool, session: aiohttp.ClientSession, hook: Webhook, clock: Clock
) -> int:
    sent = 0
    budget = time.monotonic() + PASS_SECONDS
    # The cursor row stays locked for the pass: one sender per endpoint across instances.
    async with pool.connection() as conn, conn.transaction():
        cursor = await db_events.cursor(conn, hook.url, clock())
        if cursor.next_attempt_at > clock():
            return 0
        for event in await db_events.after(conn, cursor.last_event, BATCH):
            if time.monotonic() > budget:  # a slow receiver: commit what went, go on later
                break
            if hook.wants(event.type):
                error = await _post(session, hook, event, clock)
                if error is not None:
                    log.warning("webhook %s: event %s not delivered (%s); retrying",
                                hook.url, event.event_id, error)  # fmt: skip
                    await db_events.failed(
                        conn, hook.url, error, clock() + backoff(cursor.attempts)
                    )
                    return sent
                sent += 1
            await db_events.delivered(conn, hook.url, event.id)
    return sent


async def _post(
    session: aiohttp.ClientSession, hook: Webhook, event: Event, clock: Clock
) -> str | None:
    body = json.dumps(event.payload(), separators=(",", ":")).encode()
    timestamp = int(clock().timestamp())
    headers = {
        "content-type": "application/json",
        "webhook-id": event.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(hook.secret.value, event.event_id, timestamp, body),
    }
    try:
        async with session.post(hook.url, data=body, headers=headers) as response:
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return repr(exc)
