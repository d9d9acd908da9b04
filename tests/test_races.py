"""Requests that really arrive together get exactly one consistent outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from fixtures_mail import Inbox
from fixtures_service import Api
from helpers import BLOCK, OTHER, OWNER, TARGET, path_of, request_assignment, scene

ROUNDS = 5


def events_of(db: psycopg.Connection[Any], assignment_id: str) -> list[tuple[str, str]]:
    rows = db.execute(
        "SELECT action, new_state FROM assignment_events WHERE assignment_id = %s ORDER BY id",
        (assignment_id,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def outbox_subjects(db: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in db.execute("SELECT subject FROM mail_outbox ORDER BY id").fetchall()]


async def test_two_confirmations_at_once(
    api: Api, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    await scene(api)
    for _ in range(ROUNDS):
        assignment, owner_link, target_link = await request_assignment(api, inbox)
        # Each side clicks twice, all four at the same moment.
        responses = await asyncio.gather(
            *(api.client.post(path_of(link)) for link in (owner_link, target_link) * 2)
        )
        assert [r.status for r in responses] == [200] * 4
        state = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
        assert state["state"] == "active"
        actions = events_of(db, assignment["id"])
        assert actions[0] == ("created", "pending")
        assert sorted(a for a, _ in actions[1:]) == ["owner_confirmed", "target_confirmed"]
        assert actions[-1][1] == "active"
        activation_mails = [s for s in outbox_subjects(db) if s.startswith(("Active", "Aktiv"))]
        assert len(activation_mails) == 2 * (_ + 1)
        await api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment")


async def waiting_for_locks(db: psycopg.Connection[Any], count: int) -> None:
    """Until `count` sessions of this database wait for a lock (the requests under test
    have reached the row another holds)."""
    for _ in range(500):
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ).fetchone()
        if row is not None and row[0] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} requests never waited for the lock")


@pytest.mark.parametrize("first", ["reset", "confirmation"])
async def test_reset_racing_the_last_confirmation(
    api: Api, inbox: Inbox, db: psycopg.Connection[Any], db_url: str, first: str
) -> None:
    """Both requests lock the block first. A third session holds that row while they
    arrive, in the order the test chooses; PostgreSQL grants waiters in arrival order,
    so each order is played for certain, and each ends consistent: the reset wins
    either way."""
    await scene(api)
    assignment, owner_link, target_link = await request_assignment(api, inbox)
    await api.client.post(path_of(owner_link))

    def reset() -> Any:
        return api.call("DELETE", f"/v1/blocks/{BLOCK}/assignment")

    def confirm() -> Any:
        return api.client.post(path_of(target_link))

    order = [reset, confirm] if first == "reset" else [confirm, reset]
    with psycopg.connect(db_url) as holder:
        holder.execute("SELECT 1 FROM blocks WHERE id = %s FOR NO KEY UPDATE", (BLOCK,))
        started = []
        for n, request in enumerate(order, start=1):
            started.append(asyncio.ensure_future(request()))
            await waiting_for_locks(db, n)
        holder.rollback()
    answers = await asyncio.gather(*started)
    reset_answer, confirm_answer = answers if first == "reset" else answers[::-1]
    assert reset_answer.status == 200
    final = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
    assert final["state"] == "reset"
    actions = [a for a, _ in events_of(db, assignment["id"])]
    if first == "confirmation":  # it activated, and the reset undid it
        assert actions == ["created", "owner_confirmed", "target_confirmed", "reset"]
        assert confirm_answer.status == 200
    else:  # the link shows a reset assignment
        assert actions == ["created", "owner_confirmed", "reset"]
        assert confirm_answer.status == 410


async def test_two_assignments_for_one_block_at_once(api: Api, db: psycopg.Connection[Any]) -> None:
    await scene(api)
    for _ in range(ROUNDS):
        responses = await asyncio.gather(
            api.call("POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET}),
            api.call("POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": OTHER}),
            api.call("POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET}),
        )
        statuses = sorted(r.status for r in responses)
        assert statuses == [201, 409, 409], statuses
        for refused in (r for r in responses if r.status == 409):
            problem = await refused.json(content_type=None)
            assert (problem["code"], problem["field"]) == ("assignment_exists", "block_id")
        live = db.execute(
            "SELECT count(*) FROM assignments WHERE block_id = %s AND state = 'pending'", (BLOCK,)
        ).fetchone()
        assert live == (1,)
        await api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment")
    # Each created assignment mailed both sides, each refused one mailed nobody.
    confirm_requests = [s for s in outbox_subjects(db) if s.startswith(("Please", "Bitte"))]
    assert len(confirm_requests) == 2 * ROUNDS


async def test_same_numbers_created_twice_at_once(api: Api, db: psycopg.Connection[Any]) -> None:
    await scene(api)
    responses = await asyncio.gather(
        *(
            api.call(
                "PUT",
                f"/v1/accounts/{OWNER}/blocks/b{i}",
                {"number": "+4930777000", "range": "0-9", "mode": "pbx"},
            )
            for i in range(4)
        )
    )
    assert sorted(r.status for r in responses) == [201, 409, 409, 409]
    count = db.execute("SELECT count(*) FROM blocks WHERE base_number = '+4930777000'").fetchone()
    assert count == (1,)


async def test_same_idempotency_key_at_once(api: Api, db: psycopg.Connection[Any]) -> None:
    await scene(api)
    headers = {"Idempotency-Key": "assign-once"}
    responses = await asyncio.gather(
        *(
            api.call(
                "POST",
                f"/v1/blocks/{BLOCK}/assignment",
                {"target_customer": TARGET},
                headers=headers,
            )
            for _ in range(4)
        )
    )
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [201] * 4
    assert len({b["id"] for b in bodies}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 3
    assert db.execute("SELECT count(*) FROM assignments").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM mail_outbox").fetchone() == (2,)


async def test_a_pbx_change_and_the_applier_recording_a_retry_never_deadlock(
    api: Api, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """The deadlock CI once met: a request locks its PBX and then queues an apply, while
    the applier, holding the PBX's queue row, records a retry (apply_state, whose
    foreign key checks the PBX row). The PBX lock no longer blocks that check, so the
    applier finishes and the request goes on after it: a wait, never a circle."""
    from datetime import UTC, datetime

    from provisioner.db import apply_queue, apply_state
    from provisioner.db import pbx as db_pbx
    from provisioner.db.apply_queue import Job

    await scene(api)
    pbx_id = (db.execute("SELECT id FROM pbxes WHERE customer = %s", (TARGET,)).fetchone() or [0])[
        0
    ]
    now = datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(db_url) as setup:
        await apply_queue.request(setup, pbx_id, "a job the applier holds", now)
    request = await psycopg.AsyncConnection.connect(db_url)
    applier = await psycopg.AsyncConnection.connect(db_url)
    try:
        await db_pbx.lock_pbx(request, pbx_id)  # the request's transaction begins
        job = Job(pbx_id, 1, 0)
        await apply_queue.retry_job(applier, job, "asterisk down", now)
        # With the PBX row locked FOR UPDATE this waited for the request, which then
        # waited for the queue row below: PostgreSQL killed one of them after 1 s.
        await asyncio.wait_for(
            apply_state.set_state(applier, pbx_id, "pending", now, error="waiting"), 5
        )
        queued = asyncio.create_task(apply_queue.request(request, pbx_id, "extension", now))
        await waiting_for_locks(db, 1)  # for the applier's queue row, as it should
        assert not queued.done()
        await applier.commit()
        await asyncio.wait_for(queued, 5)
        await request.commit()
    finally:
        await request.close()
        await applier.close()
    assert db.execute("SELECT state FROM apply_state").fetchall() == [("pending",)]
