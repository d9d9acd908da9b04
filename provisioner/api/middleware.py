"""The plain middlewares: request ids, problem+json errors, and reading the body before
anything else. API keys are `auth`'s; the unit of work (one transaction per request,
with its idempotency record) is `unit_of_work`'s."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

from aiohttp import EofStream, web
from aiohttp.http_exceptions import HttpProcessingError
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
# Bodies are a few hundred bytes; 64 KiB leaves room and refuses abuse early.
MAX_BODY = 64 * 1024
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
        except (HttpProcessingError, web.RequestPayloadError):
            # A body that does not decode as its Content-Encoding says (gzip that is
            # not), or a broken chunked encoding.
            raise ProblemError(
                "the body could not be read as its Content-Encoding and Transfer-Encoding say",
                code="malformed_body",
            ) from None
    return await handler(request)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: a body announced over MAX_BODY is refused with 413 at
    once, before the client sends it (aiohttp's own handler says 100 Continue to any
    size, and the request then ended with 408); otherwise as aiohttp does."""
    length = request.content_length
    if length is not None and length > MAX_BODY:
        return problem_response(
            413, "body_too_large", "Request Entity Too Large",
            f"the body may have at most {MAX_BODY} bytes", request_id=uuid.uuid4().hex,
        )  # fmt: skip
    expect = request.headers.get("Expect", "")
    if request.version >= (1, 1):
        if expect.lower() != "100-continue":
            return problem_response(
                417, "expectation_failed", "Expectation failed",
                "the only expectation this server meets is 100-continue",
                request_id=uuid.uuid4().hex,
            )  # fmt: skip
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # The 100 is no part of the answer: the answer's own bytes start from zero.
        request.writer.output_size = 0
    return None
