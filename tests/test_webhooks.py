"""Events to the portal: signed webhooks (checked with the `standardwebhooks` package,
as a portal would), delivered in order and at least once from an outbox written with
the change, never lost while the receiver is down or the service restarts; and the
same events from GET /v1/events."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import Api, Inbox, free_port
from helpers import BLOCK, OWNER, TARGET, path_of, request_assignment, scene
from standardwebhooks import Webhook as Verifier

from provisioner.app import create_app
from provisioner.settings import Secret, Settings, SettingsError, Webhook, load

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


async def until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_events_reach_a_receiver_that_was_down_across_a_restart_in_order(
    settings: Settings, inbox: Inbox
) -> None:
    receiver = Receiver(free_port())
    hook = Webhook(url=f"http://127.0.0.1:{receiver.port}/hook", secret=Secret(SECRET))
    settings = replace(settings, webhooks=(hook,))
    async with service(settings) as api:  # the receiver is down all along
        await scene(api)
        assignment, owner_link, target_link = await request_assignment(api, inbox)
        await api.client.post(path_of(owner_link))
        await api.client.post(path_of(target_link))
        await api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment",
                     headers={"X-Acting-Customer": OWNER})  # fmt: skip
        pulled = await api.ok("GET", "/v1/events")
        await asyncio.sleep(1.5)  # a few failed attempts
    await receiver.start()
    try:
        async with service(settings) as api:  # restarted: the outbox is in PostgreSQL
            wanted = [e["id"] for e in pulled["events"]]
            await until(lambda: {e["id"] for e in receiver.got} >= set(wanted), 30,
                        f"delivered {len(receiver.got)} of {len(wanted)}")  # fmt: skip
            again = await api.ok("GET", f"/v1/events?after={pulled['events'][1]['cursor']}")
    finally:
        await receiver.stop()

    assert receiver.refused == 0
    # In order (a redelivery may repeat one, never reorder), each as GET /v1/events has it.
    first_seen = list(dict.fromkeys(e["id"] for e in receiver.got))
    assert first_seen[: len(wanted)] == wanted
    by_id = {e["id"]: e for e in receiver.got}
    assert [by_id[i] for i in wanted] == pulled["events"]
    mine = [e for e in pulled["events"] if e["data"].get("assignment_id") == assignment["id"]]
    assert [e["type"] for e in mine] == [
        "assignment.created", "assignment.owner_confirmed", "assignment.target_confirmed",
        "assignment.activated", "assignment.reset",
    ]  # fmt: skip
    assert mine[3]["data"] | {"state": "active"} == mine[3]["data"]
    assert mine[3]["data"]["target"] == TARGET
    # The cursor pages: after the second event come the others.
    assert [e["id"] for e in again["events"]] == wanted[2:]
    assert again["next"] == pulled["next"]


async def test_the_feed_is_the_operators_and_its_cursor_is_checked(
    api: Api,
) -> None:
    await scene(api)
    await api.problem(403, "operator_only", "GET", "/v1/events",
                      headers={"X-Acting-Customer": TARGET})  # fmt: skip
    await api.problem(422, "invalid_field", "GET", "/v1/events?after=-1")
    await api.problem(422, "invalid_field", "GET", "/v1/events?limit=0")
    empty = await api.ok("GET", "/v1/events?after=999999")
    assert empty == {"events": [], "next": "999999"}


def test_a_webhook_needs_a_url_and_a_standard_secret(tmp_path: Any) -> None:
    config = tmp_path / "c.yaml"
    for bad in (
        {"url": "ftp://x", "secret": SECRET},
        {"url": "http://x", "secret": "plain"},
        {"url": "http://x", "secret": SECRET, "typo": 1},
    ):
        config.write_text(json.dumps({"webhooks": [bad]}))
        with pytest.raises(SettingsError):
            load(config, {})
