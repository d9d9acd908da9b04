"""Domain errors. Each carries its HTTP status and a stable machine-readable code.

The API renders them as RFC 9457 problem+json; the code is the contract with the
portal, the title and detail are for people.
"""

from __future__ import annotations


class ProblemError(Exception):
    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        if code is not None:
            self.code = code


class InvalidInput(ProblemError):
    status = 422
    code = "invalid_field"
    title = "A field is invalid"


class Unauthorized(ProblemError):
    status = 401
    code = "unauthorized"
    title = "Missing or unknown API key"


class Forbidden(ProblemError):
    status = 403
    code = "forbidden"
    title = "Not allowed"


class NotFound(ProblemError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(ProblemError):
    status = 409
    code = "conflict"
    title = "Conflicts with the current state"


class RequestTimeout(ProblemError):
    status = 408
    code = "request_timeout"
    title = "The request body did not arrive in time"


class AsteriskDown(ProblemError):
    status = 503
    code = "asterisk_unavailable"
    title = "The Asterisk node does not answer"
