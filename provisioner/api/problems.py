"""RFC 9457 problem+json responses."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from provisioner.domain.errors import ProblemError

CONTENT_TYPE = "application/problem+json"


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    field: str | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": f"urn:provisioner:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if field is not None:
        body["field"] = field
    if request_id is not None:
        body["request_id"] = request_id
    return web.Response(
        status=status,
        # ASCII escapes: a detail that quotes input (a lone surrogate in a path) still
        # encodes, so the answer stays problem+json.
        body=json.dumps(body).encode(),
        content_type=CONTENT_TYPE,
        headers=headers,
    )


def from_error(error: ProblemError, request_id: str | None) -> web.Response:
    return problem_response(
        error.status,
        error.code,
        error.title,
        error.detail,
        field=error.field,
        request_id=request_id,
    )
