"""The plain middlewares: request ids, problem+json errors, and reading the body before
anything else. API keys are `auth`'s; the unit of work (one transaction per request,
with its idempotency record) is `unit_of_work`'s."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

from aiohttp import EofStream, web
from aiohttp.typedefs import Handler
from psycopg_pool import PoolTimeout

from provisioner.api.problems import from_error, problem_response
from provisioner.domain.errors import (
    ProblemError,
    RequestTimeout,
)

log = logging.getLogger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)
# A request body arrives within this many seconds, or the request ends with 408.
BODY_TIMEOUT = 10.0
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def shown(text: str) -> str:
    """A request's value as a log line may carry it: line breaks, control and format
    characters escaped (repr's rules), so no request can forge or split a line."""
    return repr(text)[1:-1]


def is_api(request: web.Request) -> bool:
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
