"""Events to the portal: signed webhooks (checked with the `standardwebhooks` package,
as a portal would), delivered in order and at least once from an outbox written with
the change, never lost while the receiver is down or the service restarts; and the
same events from GET /v1/events."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from aiohttp import web
from fixtures_mail import Inbox
from fixtures_service import Api
from helpers import BLOCK, OWNER, TARGET, path_of, request_assignment, scene
from ports import free_port
from waiting import wait_until
from webhook_helpers import SECRET, Receiver, service

from provisioner.settings import Secret, Settings, SettingsError, Webhook
from provisioner.settings.load import load


def cursor(db_url: str, url: str) -> tuple[Any, ...] | None:
    """The webhook's delivery cursor: (last_event, attempts, last_error)."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT last_event, attempts, last_error FROM webhook_cursors WHERE url = %s", (url,)
        ).fetchone()


async def test_events_reach_a_receiver_that_was_down_across_a_restart_in_order(
    settings: Settings, inbox: Inbox, db_url: str
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
        await wait_until(lambda: (cursor(db_url, hook.url) or (0, 0))[1] >= 1,
                         "a failed attempt while the receiver is down", 10)  # fmt: skip
    await receiver.start()
    try:
        async with service(settings) as api:  # restarted: the outbox is in PostgreSQL
            wanted = [e["id"] for e in pulled["events"]]
            await wait_until(lambda: {e["id"] for e in receiver.got} >= set(wanted),
                             f"not every event of {len(wanted)} delivered", 30)  # fmt: skip
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


class Endpoint:
    """A webhook endpoint that answers as told: slowly, or with a redirect."""

    def __init__(self, *, delay: float = 0.0, status: int = 204, location: str = "") -> None:
        self.port, self.delay, self.status, self.location = free_port(), delay, status, location
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.hits += 1
        await asyncio.sleep(self.delay)
        headers = {"Location": self.location} if self.location else None
        return web.Response(status=self.status, headers=headers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> Endpoint:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.mark.slow  # its endpoint takes 8 s an event
async def test_a_slow_endpoint_delays_no_other_endpoint(settings: Settings, inbox: Inbox) -> None:
    """The slow endpoint is listed first and takes 8 s an event; the other still gets
    each event within about a second of its commit."""
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        async with Endpoint(delay=8.0) as slow:
            hooks = (
                Webhook(url=slow.url, secret=Secret(SECRET)),
                Webhook(url=f"http://127.0.0.1:{receiver.port}/hook", secret=Secret(SECRET)),
            )
            async with service(replace(settings, webhooks=hooks)) as api:
                await scene(api)
                started = time.monotonic()
                await request_assignment(api, inbox)
                await wait_until(lambda: slow.hits >= 1, "the slow endpoint got nothing", 5)
                await wait_until(lambda: len(receiver.got) >= 1,
                                 "the fast endpoint waited for the slow one", 3)  # fmt: skip
                took = time.monotonic() - started
    finally:
        await receiver.stop()
    assert [e["type"] for e in receiver.got] == ["assignment.created"]
    assert took < 3


async def test_a_redirect_is_a_failed_delivery_and_is_not_followed(
    settings: Settings, inbox: Inbox, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver(free_port())
    await receiver.start()
    elsewhere = f"http://127.0.0.1:{receiver.port}/hook"
    try:
        async with Endpoint(status=307, location=elsewhere) as redirecting:
            hook = Webhook(url=redirecting.url, secret=Secret(SECRET))
            async with service(replace(settings, webhooks=(hook,))) as api:
                await scene(api)
                await request_assignment(api, inbox)
                # The attempt is over when its failure is stored: had it followed the
                # redirect, the receiver would have the event by then.
                await wait_until(lambda: (cursor(db_url, hook.url) or (0, 0, None))[2],
                                 "no failed delivery was stored", 5)  # fmt: skip
                assert redirecting.hits >= 1
    finally:
        await receiver.stop()
    assert receiver.got == [], "the signed event went where the redirect pointed"
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT last_event, last_error FROM webhook_cursors WHERE url = %s", (hook.url,)
        ).fetchone()
    assert row == (0, "HTTP 307: redirects are not followed"), row
    assert "HTTP 307: redirects are not followed" in caplog.text


async def test_an_unreachable_endpoint_is_logged_without_headers_or_body(
    settings: Settings, inbox: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    hook = Webhook(url=f"http://127.0.0.1:{free_port()}/hook?token=t0ps3cret",
                   secret=Secret(SECRET))  # fmt: skip
    async with service(replace(settings, webhooks=(hook,))) as api:
        await scene(api)
        await request_assignment(api, inbox)
        await wait_until(lambda: "not delivered" in caplog.text, "no failure was logged", 5)
    lines = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert lines and all("cannot connect" in line for line in lines), lines
    for secret in ("webhook-signature", "v1,", "t0ps3cret", "assignment.created", SECRET):
        assert secret not in caplog.text
