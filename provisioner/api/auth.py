"""API keys: every /v1 request names a configured key (Bearer); role `engineer` only
reads; `X-Acting-Customer`, where given, is a customer number."""

from __future__ import annotations

import hashlib

from aiohttp import web
from aiohttp.typedefs import Handler

from provisioner.api import keys
from provisioner.api.middleware import MUTATING, is_api
from provisioner.domain import rules
from provisioner.domain.errors import Forbidden, ProblemError, Unauthorized
from provisioner.settings import ApiKey, Settings

API_KEY_NAME = web.RequestKey("api_key_name", str)
API_KEY_ROLE = web.RequestKey("api_key_role", str)


def key_for(settings: Settings, presented: str) -> ApiKey | None:
    """The configured key whose SHA-256 is the presented key's (only hashes are kept)."""
    digest = hashlib.sha256(presented.encode()).hexdigest()
    return next((k for k in settings.api_keys if k.key_sha256 == digest), None)


@web.middleware
async def api_keys(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not is_api(request):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("send Authorization: Bearer <api key>", code="missing_api_key")
    # Keys are printable ASCII; raw bytes in the header arrive as other characters here.
    if not (presented.isascii() and presented.isprintable()):
        raise Unauthorized("unknown API key", code="unknown_api_key")
    key = key_for(request.app[keys.SETTINGS], presented)
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
    request[API_KEY_ROLE] = key.role
    return await handler(request)
