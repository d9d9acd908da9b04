"""The confirm link's pages. GET only shows; POST confirms (mail scanners open links)."""

from __future__ import annotations

from aiohttp import web

from provisioner.api.middleware import UNIT
from provisioner.domain.errors import NotFound
from provisioner.service import assignments
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
    pages = request.app[PAGES]
    try:
        view = await assignments.look_up_token(request[UNIT], request.match_info["token"])
    except NotFound:
        return _page(pages.not_found(), 404)
    status = 410 if view.assignment.state in ("reset", "expired") else 200
    return _page(pages.confirm(view), status)


async def confirm(request: web.Request) -> web.Response:
    pages = request.app[PAGES]
    try:
        view = await assignments.confirm(request[UNIT], request.match_info["token"])
    except NotFound:
        return _page(pages.not_found(), 404)
    status = 410 if view.assignment.state in ("reset", "expired") else 200
    return _page(pages.confirm(view), status)
