"""A webhook receiver (the portal's endpoint, verifying signatures as the Standard
Webhooks library does) and the service with workers, for the webhook and feed tests."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fixtures_service import Api
from standardwebhooks import Webhook as Verifier

from provisioner.app import create_app
from provisioner.settings import Settings

SECRET = "whsec_" + base64.b64encode(b"portal-webhook-test-key-32-bytes").decode()


class Receiver:
    """The portal's webhook endpoint: verifies every request, keeps what it got."""

    def __init__(self, port: int) -> None:
        self.port, self.refused = port, 0
        self.got: list[dict[str, Any]] = []
        self.verifier = Verifier(SECRET)
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self.verifier.verify(body, dict(request.headers))
        except Exception:  # a bad signature: refuse, as the portal would
            self.refused += 1
            return web.Response(status=400)
        event = json.loads(body)
        assert event["id"] == request.headers["webhook-id"]
        self.got.append(event)
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[Api]:
    """The service on the real clock (signatures carry a timestamp the receiver checks)."""
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client)
    finally:
        await client.close()
