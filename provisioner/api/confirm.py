"""The confirm link's pages. GET only shows; POST confirms (mail scanners open links)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from provisioner.api.unit_of_work import UNIT
from provisioner.domain.errors import NotFound
from provisioner.service import assignments
from provisioner.service.assignments import ConfirmView
from provisioner.service.unit import Unit
from provisioner.web.pages import Pages

PAGES = web.AppKey("pages", Pages)

# The token is in the URL: keep it out of Referer headers and caches; allow no scripts.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
}


def _page(html: str, status: int) -> web.Response:
    return web.Response(text=html, status=status, content_type="text/html", headers=HEADERS)


async def show(request: web.Request) -> web.Response:
    return await _page_for(request, assignments.look_up_token)


async def confirm(request: web.Request) -> web.Response:
    return await _page_for(request, assignments.confirm)


async def _page_for(
    request: web.Request, use_case: Callable[[Unit, str], Awaitable[ConfirmView]]
) -> web.Response:
    pages = request.app[PAGES]
    try:
        view = await use_case(request[UNIT], request.match_info["token"])
    except NotFound:
        return _page(pages.not_found(), 404)
    status = 410 if view.assignment.state in ("reset", "expired") else 200
    return _page(pages.confirm(view), status)
