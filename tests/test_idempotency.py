"""Idempotent retries: the first response again, no side effect repeated."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from fixtures_db import snapshot
from fixtures_mail import Inbox
from fixtures_service import ENGINEER_KEY, Api
from helpers import BLOCK, OWNER, TARGET, scene


async def test_retry_returns_the_first_response_and_sends_no_second_mail(
    api: Api, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    await scene(api)
    headers = {"Idempotency-Key": "portal-req-42"}
    path = f"/v1/blocks/{BLOCK}/assignment"
    first = await api.call("POST", path, {"target_customer": TARGET}, headers=headers)
    first_body = await first.read()
    assert first.status == 201
    await inbox.wait_for(2)
    for spacing in ('{"target_customer": "K100200"}', '{ "target_customer":"K100200" }'):
        retry = await api.call(
            "POST", path, data=spacing,
            headers={**headers, "Content-Type": "application/json"},
        )  # fmt: skip
        assert retry.status == 201
        assert await retry.read() == first_body
        assert retry.headers["Idempotent-Replayed"] == "true"
    # Two mails in the outbox (the transaction's), both sent (the sender's): nothing
    # else can arrive, so the inbox is complete now.
    assert db.execute("SELECT count(*) FROM mail_outbox").fetchone() == (2,)
    for _ in range(500):
        if db.execute("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL").fetchone() == (0,):
            break
        await asyncio.sleep(0.01)
    assert len(inbox.messages) == 2
    assert db.execute("SELECT count(*) FROM assignment_events").fetchone() == (1,)


async def test_same_key_with_another_body_is_refused(api: Api, db: psycopg.Connection[Any]) -> None:
    await scene(api)
    headers = {"Idempotency-Key": "k1"}
    await api.ok("POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET},
                 headers=headers)  # fmt: skip
    before = snapshot(db)
    problem = await api.problem(
        422, "idempotency_key_reused", "POST", f"/v1/blocks/{BLOCK}/assignment",
        {"target_customer": "K300400"}, headers=headers,
    )  # fmt: skip
    assert problem["field"] == "Idempotency-Key"
    # The same key on another path is another request too.
    await api.problem(422, "idempotency_key_reused", "DELETE", f"/v1/blocks/{BLOCK}/assignment",
                      headers=headers)  # fmt: skip
    assert snapshot(db) == before


async def test_replayed_delete_and_put(api: Api, db: psycopg.Connection[Any]) -> None:
    await scene(api)
    await api.ok("POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET})
    headers = {"Idempotency-Key": "reset-1"}
    first = await api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment", headers=headers)
    again = await api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment", headers=headers)
    assert first == again
    # Without the key, a second reset finds nothing to reset.
    await api.problem(404, "assignment_not_found", "DELETE", f"/v1/blocks/{BLOCK}/assignment")
    body = {"name": "Isar Logistik AG", "email": "admin@isar.example", "language": "en"}
    put = {"Idempotency-Key": "acct-1"}
    assert (await api.call("PUT", f"/v1/accounts/{OWNER}", body, headers=put)).status == 200
    assert (await api.call("PUT", f"/v1/accounts/{OWNER}", body, headers=put)).status == 200


async def test_keys_are_per_api_key(api: Api) -> None:
    """One client's key never replays another client's response."""
    await scene(api)
    headers = {"Idempotency-Key": "shared"}
    await api.ok("GET", f"/v1/accounts/{OWNER}", headers=headers, key=ENGINEER_KEY)
    created = await api.call(
        "POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET}, headers=headers
    )
    assert created.status == 201


async def test_a_failed_request_stores_nothing_and_can_be_retried(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    await scene(api)
    headers = {"Idempotency-Key": "mode-then-assign"}
    await api.ok("POST", f"/v1/blocks/{BLOCK}/mode", {"mode": "standard"})
    await api.problem(
        409, "block_not_pbx_mode", "POST", f"/v1/blocks/{BLOCK}/assignment",
        {"target_customer": TARGET}, headers=headers,
    )  # fmt: skip
    assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (0,)
    await api.ok("POST", f"/v1/blocks/{BLOCK}/mode", {"mode": "pbx"})
    retried = await api.call(
        "POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET}, headers=headers
    )
    assert retried.status == 201
