"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from provisioner.api import keys
from provisioner.db import apply_queue
from provisioner.metrics import QUEUE_DEPTH


@cache
def openapi_document() -> dict[str, Any]:
    text = resources.files("provisioner.api").joinpath("openapi.yaml").read_text()
    document: dict[str, Any] = yaml.safe_load(text)
    return document


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with request.app[keys.POOL].connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    except Exception as exc:
        return web.json_response(
            {"status": "unavailable", "database": type(exc).__name__}, status=503
        )
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    # The queue is shared by all instances: read it at scrape time, not per process.
    try:
        async with request.app[keys.POOL].connection(timeout=2) as conn:
            QUEUE_DEPTH.set(await apply_queue.queue_depth(conn))
    except Exception:  # noqa: S110 - metrics must answer even without the database
        pass
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi(request: web.Request) -> web.Response:
    return web.Response(
        text=json.dumps(openapi_document(), indent=2), content_type="application/json"
    )
