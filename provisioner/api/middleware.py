"""Middlewares: request ids, problem+json errors, API keys, and the unit of work.

The unit of work is one database transaction per request. Idempotency records are
claimed and stored inside that same transaction, so a request either happened with its
recorded response or did not happen at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import uuid

import psycopg
from aiohttp import EofStream, web
from aiohttp.typedefs import Handler
from psycopg_pool import PoolTimeout

from provisioner.api import keys
from provisioner.api.problems import from_error, problem_response
from provisioner.db import idempotency
from provisioner.domain import rules
from provisioner.domain.credentials import SecretUnreadable
from provisioner.domain.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    ProblemError,
    RequestTimeout,
    Unauthorized,
)
from provisioner.service.unit import Actor, Policy, Unit

log = logging.getLogger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)
UNIT = web.RequestKey("unit", Unit)
API_KEY_NAME = web.RequestKey("api_key_name", str)
# Fields of a response shown once (a new phone's password): an idempotency record keeps
# the response sealed, or without them where no secrets key is configured.
SHOWN_ONCE = web.ResponseKey("shown_once", tuple)

# How often a request runs when PostgreSQL rolls it back for a deadlock or a
# serialization failure; each run is the whole transaction, idempotency record included.
RETRIES = 3
# A request body arrives within this many seconds, or the request ends with 408.
BODY_TIMEOUT = 10.0
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


def shown(text: str) -> str:
    """A request's value as a log line may carry it: line breaks, control and format
    characters escaped (repr's rules), so no request can forge or split a line."""
    return repr(text)[1:-1]


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/v1/")


@web.middleware
async def request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    presented = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = presented if _SAFE_ID.fullmatch(presented) else uuid.uuid4().hex
    response = await handler(request)
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    return response


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as problem+json; nothing internal leaks."""
    rid = request.get(REQUEST_ID)
    try:
        return await handler(request)
    except ProblemError as error:
        return from_error(error, rid)
    except ClientGone:
        # Nobody reads this answer; the log says what happened, as a client's doing.
        log.info("client went away while sending %s %s (request %s)",
                 shown(request.method), shown(request.path), rid)  # fmt: skip
        return problem_response(
            400, "client_closed_request", "Client closed the request",
            "the connection closed before the body arrived", request_id=rid,
        )  # fmt: skip
    except PoolTimeout:
        log.warning("no database connection for %s %s (request %s)",
                    shown(request.method), shown(request.path), rid)  # fmt: skip
        return problem_response(
            503, "service_unavailable", "Service unavailable",
            "no database connection could be had in time (all busy, or the database is"
            " away); retry shortly", request_id=rid, headers={"Retry-After": "1"},
        )  # fmt: skip
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "body_too_large",
        }.get(exc.status, "http_error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(
            exc.status, code, exc.reason, exc.text or exc.reason, request_id=rid, headers=headers
        )
    except Exception:
        log.exception("unhandled error in %s %s (request %s)",
                      shown(request.method), shown(request.path), rid)  # fmt: skip
        return problem_response(
            500,
            "internal_error",
            "Internal error",
            "the request failed; quote the request id when reporting it",
            request_id=rid,
        )


class ClientGone(Exception):
    """The client closed the connection before its request body arrived."""


@web.middleware
async def read_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The whole body, within BODY_TIMEOUT, before anything takes a database connection:
    a slow or stalled client holds no transaction and no pooled connection."""
    if request.method in MUTATING and request.can_read_body:
        try:
            await asyncio.wait_for(request.read(), BODY_TIMEOUT)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {BODY_TIMEOUT:.0f} s"
            ) from None
        except (ConnectionError, EofStream):
            raise ClientGone() from None
    return await handler(request)


@web.middleware
async def api_keys(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _is_api(request):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("send Authorization: Bearer <api key>", code="missing_api_key")
    # Keys are printable ASCII; raw bytes in the header arrive as other characters here.
    if not (presented.isascii() and presented.isprintable()):
        raise Unauthorized("unknown API key", code="unknown_api_key")
    key = request.app[keys.SETTINGS].api_key_for(presented)
    if key is None:
        raise Unauthorized("unknown API key", code="unknown_api_key")
    if request.method in MUTATING and key.role != "portal":
        raise Forbidden(f"API key {key.name} ({key.role}) is read-only", code="read_only_key")
    acting = request.headers.get("X-Acting-Customer")
    if acting is not None and not rules.CUSTOMER.fullmatch(acting):
        raise ProblemError(
            "X-Acting-Customer must be a customer number",
            field="X-Acting-Customer",
            code="invalid_acting_customer",
        )
    request[API_KEY_NAME] = key.name
    return await handler(request)


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
    if not (_is_api(request) or request.path.startswith("/confirm/")):
        return await handler(request)
    actor = Actor(
        name=request.get(API_KEY_NAME, "confirm-link"),
        acting_customer=request.headers.get("X-Acting-Customer") if _is_api(request) else None,
        request_id=request[REQUEST_ID],
    )
    # Only API clients keep idempotency records: confirming is idempotent by itself, and
    # nobody unauthenticated may fill the table.
    keyed = request.method in MUTATING and _is_api(request)
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
