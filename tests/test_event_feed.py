"""The event feed in commit order: neither GET /v1/events nor a webhook endpoint ever
passes an event that a slower transaction commits after a faster one, whatever order
their rows were inserted in (migration 0010)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from fixtures_mail import Inbox, confirm_link
from fixtures_service import Api
from helpers import OWNER, TARGET, path_of, scene
from ports import free_port
from waiting import wait_until
from webhook_helpers import SECRET, Receiver, service

from provisioner.settings import Secret, Settings, Webhook


def insert_event(conn: psycopg.Connection[Any], event_id: str) -> int:
    row = conn.execute(
        "INSERT INTO events (event_id, type, at, data) VALUES (%s, 'test.held', now(), '{}')"
        " RETURNING id",
        (event_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_an_event_committed_late_below_a_cursor_still_reaches_every_reader(
    settings: Settings, db_url: str
) -> None:
    """The case that lost events before: the slow transaction inserts first (the lower
    id) and commits after a fast one. A poller that already read the fast event, and a
    webhook endpoint that already got it, still get the slow one."""
    receiver = Receiver(free_port())
    await receiver.start()
    hook = Webhook(url=f"http://127.0.0.1:{receiver.port}/hook", secret=Secret(SECRET))
    try:
        async with service(replace(settings, webhooks=(hook,))) as api:
            with (
                psycopg.connect(db_url) as slow,
                psycopg.connect(db_url, autocommit=True) as fast,
            ):
                slow_id = insert_event(slow, "evt_slow")  # inserted first, still open
                fast_id = insert_event(fast, "evt_fast")  # inserted second, committed
                assert slow_id < fast_id

                first = await api.ok("GET", "/v1/events")
                assert [e["id"] for e in first["events"]] == ["evt_fast"]
                await wait_until(
                    lambda: [e["id"] for e in receiver.got] == ["evt_fast"],
                    "the webhook endpoint did not get the fast event",
                    10,
                )
                slow.commit()

            later = await api.ok("GET", f"/v1/events?after={first['next']}")
            assert [e["id"] for e in later["events"]] == ["evt_slow"]
            assert int(later["next"]) > int(first["next"])
            await wait_until(
                lambda: len(receiver.got) == 2, f"the webhook endpoint got only {receiver.got}", 10
            )
            assert [e["id"] for e in receiver.got] == ["evt_fast", "evt_slow"]
    finally:
        await receiver.stop()


async def test_an_event_that_rolls_back_leaves_a_gap_and_nothing_else(
    api: Api, db_url: str
) -> None:
    with psycopg.connect(db_url) as conn:
        insert_event(conn, "evt_gone")
        conn.commit()
        insert_event(conn, "evt_never")
        conn.rollback()
        insert_event(conn, "evt_kept")
        conn.commit()
    feed = await api.ok("GET", "/v1/events")
    assert [e["id"] for e in feed["events"]] == ["evt_gone", "evt_kept"]
    cursors = [int(e["cursor"]) for e in feed["events"]]
    assert cursors == sorted(cursors) and cursors[1] > cursors[0]


BLOCKS = 6
SECONDS = 8.0
# The order of an assignment's events (the two confirmations come in either order).
STEP = {
    "assignment.created": 0, "assignment.owner_confirmed": 1,
    "assignment.target_confirmed": 1, "assignment.activated": 2, "assignment.reset": 3,
}  # fmt: skip


@pytest.mark.slow
async def test_under_concurrent_assignments_every_event_reaches_the_poller_and_the_webhook(
    settings: Settings, inbox: Inbox, db_url: str
) -> None:
    """Clients create, confirm and reset assignments of six blocks at once while a poller
    follows GET /v1/events and a webhook endpoint receives: afterwards both have every
    row of `events`, each once in commit order, and every assignment's events in the
    order they happened."""
    receiver = Receiver(free_port())
    await receiver.start()
    hook = Webhook(url=f"http://127.0.0.1:{receiver.port}/hook", secret=Secret(SECRET))
    polled: list[dict[str, Any]] = []
    try:
        async with service(replace(settings, webhooks=(hook,))) as api:
            await scene(api)
            for n in range(BLOCKS):
                numbers = {"number": f"+49221{n + 2}1234", "range": "0-9", "mode": "pbx"}
                await api.ok("PUT", f"/v1/accounts/{OWNER}/blocks/load-{n}", numbers)
            deadline = time.monotonic() + SECONDS
            done = asyncio.Event()

            async def assign_over_and_over(n: int) -> None:
                rnd = random.Random(n)
                while time.monotonic() < deadline:
                    await cycle(api, inbox, f"load-{n}", rnd)

            async def poll() -> None:
                cursor = "0"
                while True:
                    page = await api.ok("GET", f"/v1/events?after={cursor}&limit=50")
                    polled.extend(page["events"])
                    cursor = page["next"]
                    if done.is_set() and not page["events"]:
                        return
                    await asyncio.sleep(0.01)

            poller = asyncio.create_task(poll())
            await asyncio.gather(*(assign_over_and_over(n) for n in range(BLOCKS)))
            # Every event here is an assignment's, committed before its request returned
            # (no node, no router: no worker emits any), so the feed is whole now.
            done.set()
            await asyncio.wait_for(poller, 30)
            with psycopg.connect(db_url) as conn:
                rows = conn.execute(
                    "SELECT event_id, type, data->>'assignment_id' FROM events ORDER BY position"
                ).fetchall()
            await wait_until(
                lambda: {e["id"] for e in receiver.got} >= {r[0] for r in rows},
                "the webhook endpoint is missing events",
                30,
            )
    finally:
        await receiver.stop()

    in_commit_order = [r[0] for r in rows]
    # Not a count of the machine's speed: every client went through at least one cycle.
    cycled = {r[2] for r in rows if r[1] == "assignment.reset"}
    assert len(cycled) >= BLOCKS, f"only {len(cycled)} assignments went through: no load ran"
    for reader, got in (("poller", polled), ("webhook", receiver.got)):
        seen = list(dict.fromkeys(e["id"] for e in got))  # a redelivery may repeat one
        missed = set(in_commit_order) - set(seen)
        assert not missed, f"{reader} missed {len(missed)} of {len(rows)} events"
        assert seen == in_commit_order, f"{reader} saw the feed out of commit order"
    per_assignment: dict[str, list[str]] = defaultdict(list)
    for _event_id, type_, assignment_id in rows:
        if assignment_id is not None:
            per_assignment[assignment_id].append(type_)
    for types in per_assignment.values():
        steps = [STEP[t] for t in types]
        assert steps == sorted(steps) and len(set(types)) == len(types), types


async def cycle(api: Api, inbox: Inbox, block: str, rnd: random.Random) -> None:
    """One assignment of the block: created, confirmed by both sides (in either order),
    reset by either side. Conflicts of a racing client are part of the load."""
    created = await api.call("POST", f"/v1/blocks/{block}/assignment",
                             {"target_customer": TARGET})  # fmt: skip
    if created.status != 201:
        return
    assignment = await created.json()
    links = [
        confirm_link(await inbox.wait_for_message(f"confirm_request.{assignment['id']}.{side}"))
        for side in ("owner", "target")
    ]
    rnd.shuffle(links)
    for link in links:
        await api.client.post(path_of(link))
    who = rnd.choice([OWNER, TARGET])
    await api.call("DELETE", f"/v1/blocks/{block}/assignment",
                   headers={"X-Acting-Customer": who})  # fmt: skip
