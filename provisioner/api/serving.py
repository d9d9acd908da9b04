"""How the HTTP server runs: its connection options, its access log (without the
health probes that answer well: an orchestrator asks every few seconds), and what its
log says of a request too malformed to reach a handler.

aiohttp answers such a request (a NUL or a bad token in a header, an obsolete line
fold, a line over its limit, two Content-Lengths, raw non-ASCII in the target...) with
400 itself, and logs it as `ERROR aiohttp.server` with a traceback: an operator's alarm
for what is a client's mistake. `quiet_client_errors` makes each one INFO line.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError
from aiohttp.web_log import AccessLogger

from provisioner.settings import Settings

SERVER_LOGGER = "aiohttp.server"
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs rid=%{X-Request-Id}o'
# Asked every 2 s by compose's health checks and by load balancers: a line each would
# bury the requests that matter. A probe that fails (503, 500) is still logged.
PROBES = frozenset({"/healthz", "/readyz"})


class ProbesUnlogged(AccessLogger):
    """aiohttp's access log, without the health probes that answered 2xx."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path in PROBES and response.status < 300:
            return
        super().log(request, response, time)


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of aiohttp's server (web.run_app, TestServer) from the settings.

    aiohttp's keep-alive timer runs from a connection's start and from each answer, and
    nothing else bounds how long a request's head may take to arrive: so it is the
    header timeout too. A client that sends its headers a byte at a time, or idles on
    a kept-alive connection, is closed after it."""
    return {
        "keepalive_timeout": settings.listen.header_timeout_seconds,
        "access_log_class": ProbesUnlogged,
        "access_log_format": ACCESS_LOG_FORMAT,
    }


class _ClientErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # RequestPayloadError: a body that broke its encoding, met again when aiohttp
        # drains the rest of it after the answer (400, malformed_body) went out.
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            # The client's words escaped (repr's rules): no request can split a line.
            record.msg = "malformed request from the client: %s"
            record.args = (repr(str(exc))[1:-1],)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


_FILTER = _ClientErrors()


def quiet_client_errors() -> None:
    """Log aiohttp's malformed-request errors as one INFO line each (idempotent)."""
    logger = logging.getLogger(SERVER_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
