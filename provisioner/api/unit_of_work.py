"""The unit of work: one database transaction per request, run again (RETRIES) when
PostgreSQL rolls it back for a deadlock or a serialization failure. Idempotency records
are claimed and stored inside that same transaction, so a request either happened with
its recorded response or did not happen at all."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re

import psycopg
from aiohttp import web
from aiohttp.typedefs import Handler

from provisioner.api import keys
from provisioner.api.auth import API_KEY_NAME
from provisioner.api.middleware import MUTATING, REQUEST_ID, is_api
from provisioner.db import idempotency
from provisioner.domain.credentials import SecretUnreadable
from provisioner.domain.errors import Conflict, InvalidInput, ProblemError
from provisioner.service.unit import Actor, Policy, Unit

log = logging.getLogger(__name__)

UNIT = web.RequestKey("unit", Unit)
# Fields of a response shown once (a new phone's password): an idempotency record keeps
# the response sealed, or without them where no secrets key is configured.
SHOWN_ONCE = web.ResponseKey("shown_once", tuple)

# How often a request runs when PostgreSQL rolls it back for a deadlock or a
# serialization failure; each run is the whole transaction, idempotency record included.
RETRIES = 3
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


async def _request_hash(request: web.Request) -> bytes:
    raw = await request.read()
    # The same JSON written with other spacing or key order is the same request.
    with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
        raw = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    digest.update(raw)
    return digest.digest()


@web.middleware
async def unit_of_work(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A path or method no route serves is answered 404 or 405 by the handler, before
    # any idempotency record: a key sent with it was never used.
    unserved = request.match_info.http_exception is not None
    if unserved or not (is_api(request) or request.path.startswith("/confirm/")):
        return await handler(request)
    actor = Actor(
        name=request.get(API_KEY_NAME, "confirm-link"),
        acting_customer=request.headers.get("X-Acting-Customer") if is_api(request) else None,
        request_id=request[REQUEST_ID],
    )
    # Only API clients keep idempotency records: confirming is idempotent by itself, and
    # nobody unauthenticated may fill the table.
    keyed = request.method in MUTATING and is_api(request)
    idem_key = request.headers.get("Idempotency-Key") if keyed else None
    if idem_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idem_key):
        raise ProblemError(
            "Idempotency-Key must be 1 to 200 printable ASCII characters",
            field="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    request_hash = await _request_hash(request) if idem_key else b""
    # A key is the client's for one acting customer: a replay never answers another
    # customer's request, which must pass its own authorization checks.
    client = f"{actor.name}/{actor.acting_customer or '-'}"
    for attempt in range(1, RETRIES + 1):
        try:
            return await _in_transaction(request, handler, actor, idem_key, request_hash, client)
        except psycopg.errors.TransactionRollback as exc:
            # A deadlock or serialization failure rolled everything back: run it again.
            if attempt == RETRIES:
                raise
            log.warning("request %s: %s; retrying (%d)", actor.request_id, type(exc).__name__,
                        attempt)  # fmt: skip
            await asyncio.sleep(0.01 * attempt)
    raise AssertionError("unreachable")


async def _in_transaction(
    request: web.Request,
    handler: Handler,
    actor: Actor,
    idem_key: str | None,
    request_hash: bytes,
    client: str,
) -> web.StreamResponse:
    app = request.app
    policy = app[keys.POLICY]
    async with app[keys.POOL].connection() as conn, conn.transaction():
        now = app[keys.CLOCK]()
        if idem_key is not None:
            stored = await idempotency.claim(conn, client, idem_key, request_hash, now)
            if stored is not None:
                if stored.request_hash != request_hash:
                    raise InvalidInput(
                        "this Idempotency-Key was used with another request",
                        field="Idempotency-Key",
                        code="idempotency_key_reused",
                    )
                assert stored.status is not None and stored.body is not None
                return web.Response(
                    status=stored.status,
                    body=_unseal(stored, policy),
                    content_type=stored.content_type or "application/json",
                    headers={"Idempotent-Replayed": "true"},
                )
        request[UNIT] = Unit(
            conn=conn, now=now, actor=actor, policy=policy, mail=app[keys.COMPOSER]
        )
        response = await handler(request)
        if idem_key is not None and isinstance(response, web.Response):
            body = response.body if isinstance(response.body, bytes) else b""
            body, sealed = _seal(body, response.get(SHOWN_ONCE, ()), policy)
            await idempotency.store(
                conn, client, idem_key, response.status, response.content_type, body, sealed
            )
    return response


def _seal(body: bytes, shown_once: tuple[str, ...], policy: Policy) -> tuple[bytes, bool]:
    """What an idempotency record keeps of a response: as it is, or, where it shows a
    secret once, sealed (or without that secret when no key is configured)."""
    if not shown_once:
        return body, False
    if policy.secrets.configured:
        return policy.secrets.seal(body.decode()).encode(), True
    data = json.loads(body)
    for name in shown_once:
        data.pop(name, None)
    return json.dumps(data).encode(), False


def _unseal(stored: idempotency.Stored, policy: Policy) -> bytes:
    assert stored.body is not None
    if not stored.sealed:
        return stored.body
    try:
        return policy.secrets.open(stored.body.decode()).encode()
    except SecretUnreadable:
        raise Conflict(
            "the response to this Idempotency-Key holds a secret that no configured key"
            " opens any more; send the request without the key",
            field="Idempotency-Key",
            code="idempotent_response_unreadable",
        ) from None
