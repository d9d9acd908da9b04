"""Pushing events to the portal's webhook endpoints (Standard Webhooks).

Each endpoint has a cursor in PostgreSQL: events are sent in commit order (so in order
per assignment and per PBX; db/events.py), one at a time, and the cursor moves only
after a 2xx. A failure keeps the cursor and retries with backoff; a crash between the
POST and the cursor update sends that event again, with the same `webhook-id` (at least
once: the receiver drops what it has seen). Events themselves were written in the
transaction of the change they describe, so none is lost over a restart of anything.

Each endpoint has its own worker (workers/tasks.py): a slow or dead endpoint delays only
its own events. Redirects are not followed: a 3xx is a failed delivery, so a signed
event never goes to an address nobody configured, and the cursor of the configured
endpoint moves only for its own 2xx. Log lines name the endpoint and what went wrong,
never the request's headers (the signature) or body.
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
import yarl
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


async def deliver_due(pool: AsyncConnectionPool, hook: Webhook, clock: Clock) -> int:
    """Send what the endpoint has not had yet; returns how many events went out."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        return await _deliver(pool, session, hook, clock)


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
                                _where(hook.url), event.event_id, error)  # fmt: skip
                    await db_events.failed(
                        conn, hook.url, error, clock() + backoff(cursor.attempts)
                    )
                    return sent
                sent += 1
            await db_events.delivered(conn, hook.url, event.position)
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
        async with session.post(
            hook.url, data=body, headers=headers, allow_redirects=False
        ) as response:
            if 200 <= response.status < 300:
                return None
            if 300 <= response.status < 400:
                return f"HTTP {response.status}: redirects are not followed"
            return f"HTTP {response.status}"
    except TimeoutError:
        return f"no answer within {TIMEOUT.total:.0f} s"
    except aiohttp.ClientConnectorError as exc:
        # Its str() names only host, port and the OS error; other client errors may carry
        # the request (headers, signature included) in their repr.
        return f"cannot connect: {exc.os_error.strerror or type(exc.os_error).__name__}"
    except (aiohttp.ClientError, OSError) as exc:
        return type(exc).__name__


def _where(url: str) -> str:
    """The endpoint as a log names it: scheme, host, port and path, no query or login."""
    parsed = yarl.URL(url)
    return str(parsed.with_user(None).with_query(None).with_fragment(None))
