"""The whole assignment flow over HTTP, with real PostgreSQL and a real SMTP server."""

from __future__ import annotations

from typing import Any

import psycopg
from fixtures_db import snapshot
from fixtures_mail import Inbox, body_of
from fixtures_service import Api, FakeClock
from helpers import (
    BLOCK,
    OTHER,
    OWNER,
    OWNER_MAIL,
    TARGET,
    TARGET_MAIL,
    path_of,
    request_assignment,
    scene,
)
from waiting import mail_settled


async def confirm(api: Api, link: str) -> tuple[int, str]:
    response = await api.client.post(path_of(link))
    return response.status, await response.text()


def queued_applies(db: psycopg.Connection[Any]) -> set[str]:
    rows = db.execute(
        "SELECT p.customer FROM apply_queue q JOIN pbxes p ON p.id = q.pbx_id"
    ).fetchall()
    return {r[0] for r in rows}


async def test_flow_owner_confirms_first(
    api: Api, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    await scene(api)
    assignment, owner_link, target_link = await request_assignment(api, inbox)
    assert assignment["state"] == "pending"
    assert assignment["owner_confirmed"] is False and assignment["target_confirmed"] is False
    assert assignment["expires_at"] == "2026-11-09T09:00:00Z"

    # The mails say exactly what is being confirmed, each in its recipient's language.
    owner_mail = inbox.to(OWNER_MAIL)[0]
    target_mail = inbox.to(TARGET_MAIL)[0]
    english, german = body_of(owner_mail), body_of(target_mail)
    for text in ("+49 89 123456 0-99", "+49891234560", "+498912345699", OWNER, TARGET):
        assert text in english and text in german
    assert "stay billed to customer number K200300" in english
    assert "weiterhin über die Kundennummer\nK200300 abgerechnet" in german
    assert "Reset assignment" in english and "Zuordnung zurücksetzen" in german
    assert owner_link != target_link

    status, page = await confirm(api, owner_link)
    assert status == 200 and 'data-state="pending"' in page
    state = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
    assert (state["state"], state["owner_confirmed"], state["target_confirmed"]) == (
        "pending", True, False,
    )  # fmt: skip
    assert queued_applies(db) == set()

    status, page = await confirm(api, target_link)
    assert status == 200 and 'data-state="active"' in page
    state = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
    assert state["state"] == "active" and state["activated_at"] is not None

    # B's PBX must be regenerated; the block now shows B's PBX as its user.
    assert queued_applies(db) == {TARGET}
    blocks = await api.ok("GET", f"/v1/accounts/{OWNER}/blocks")
    assert blocks["blocks"][0]["used_by_pbx"] == TARGET

    messages = await inbox.wait_for(4)
    notices = [m for m in messages[2:]]
    assert {m["To"] for m in notices} == {OWNER_MAIL, TARGET_MAIL}
    assert any(m["Subject"].startswith("Active:") for m in notices)
    assert any(m["Subject"].startswith("Aktiv:") for m in notices)

    events = await api.ok("GET", f"/v1/assignments/{assignment['id']}/events")
    actions = [(e["action"], e["old_state"], e["new_state"]) for e in events["events"]]
    assert actions == [
        ("created", None, "pending"),
        ("owner_confirmed", "pending", "pending"),
        ("target_confirmed", "pending", "active"),
    ]
    assert events["events"][0]["actor"] == "portal-backend"
    assert events["events"][1]["actor"] == "confirm-link:owner"
    assert events["events"][1]["acting_customer"] == OWNER
    assert events["events"][2]["acting_customer"] == TARGET
    assert all(e["request_id"] for e in events["events"])


async def test_what_the_flow_tells_the_portal_both_sides_and_the_owners_pbx(
    api: Api, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    """What mutation testing found nothing asserting (`make mutation`): the event feed's
    payloads, names and expiry in the mails, the link's strength, the confirm page's
    thanks, the owner's own PBX losing and regaining the block, who may read the state."""
    await scene(api)
    await api.ok("PUT", f"/v1/accounts/{OWNER}/pbx")  # the owner has a PBX of its own
    assignment, owner_link, target_link = await request_assignment(api, inbox)
    for mail, name in ((inbox.to(OWNER_MAIL)[0], "Isar"), (inbox.to(TARGET_MAIL)[0], "Spree")):
        text = body_of(mail)
        assert f"{name} Logistik GmbH" in text.split("\n\n")[0]  # the greeting names them
        assert "Isar Logistik GmbH" in text and "Spree Logistik GmbH" in text
        assert "2026-11-09 09:00 UTC" in text
    assert "You asked to use your number block" in body_of(inbox.to(OWNER_MAIL)[0])
    # 256 random bits, URL-safe: 43 characters.
    assert {len(link.rsplit("/", 1)[1]) for link in (owner_link, target_link)} == {43}

    assert "Thank you, your confirmation has been recorded." in (await confirm(api, owner_link))[1]
    await confirm(api, target_link)
    query = "SELECT p.customer, q.reason FROM apply_queue q JOIN pbxes p ON p.id = q.pbx_id"
    activated = f"assignment activated: block {BLOCK}"
    assert dict(db.execute(query).fetchall()) == {TARGET: activated, OWNER: activated}

    # Who may read the state: either party, acting for itself; nobody else.
    for customer in (OWNER, TARGET):
        acting = {"X-Acting-Customer": customer}
        await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment", headers=acting)
        await api.ok("GET", f"/v1/assignments/{assignment['id']}/events", headers=acting)
    await api.problem(404, "block_not_found", "GET", f"/v1/blocks/{BLOCK}/assignment",
                      headers={"X-Acting-Customer": OTHER})  # fmt: skip
    await api.problem(404, "assignment_not_found", "GET",
                      f"/v1/assignments/{assignment['id']}/events",
                      headers={"X-Acting-Customer": OTHER})  # fmt: skip

    db.execute("DELETE FROM apply_queue")
    await api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment")
    assert set(db.execute("SELECT reason FROM apply_queue").fetchall()) == {
        (f"assignment reset: block {BLOCK}",)
    }
    assert queued_applies(db) == {TARGET, OWNER}

    feed = await api.ok("GET", "/v1/events?limit=500")
    flow = [(e["type"], e["data"]) for e in feed["events"] if e["type"].startswith("assignment.")]
    base = {"assignment_id": assignment["id"], "block_id": BLOCK, "owner": OWNER, "target": TARGET}
    assert flow == [
        ("assignment.created", {**base, "state": "pending", "old_state": None}),
        ("assignment.owner_confirmed", {**base, "state": "pending", "old_state": "pending"}),
        ("assignment.target_confirmed", {**base, "state": "active", "old_state": "pending"}),
        ("assignment.activated", {**base, "state": "active", "old_state": "pending"}),
        ("assignment.reset", {**base, "state": "reset", "old_state": "active"}),
    ]


async def test_flow_target_confirms_first(api: Api, inbox: Inbox) -> None:
    await scene(api)
    _, owner_link, target_link = await request_assignment(api, inbox)
    assert (await confirm(api, target_link))[0] == 200
    state = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
    assert (state["owner_confirmed"], state["target_confirmed"]) == (False, True)
    await confirm(api, owner_link)
    state = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
    assert state["state"] == "active"


async def test_waiting_for_the_outbox_sees_a_duplicate_that_comes_late(
    api: Api, inbox: Inbox, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """What the "nothing more arrives" checks wait on (mail_settled) catches a second
    mail that arrives long after the first: a planted copy of a sent mail, sent by an
    SMTP server that takes a second over each mail (a fixed sleep of 0.3 s, as this
    file once had, would have looked before it came)."""
    await scene(api)
    await request_assignment(api, inbox)
    await mail_settled(db_url)
    before = len(inbox.messages)
    inbox.delay = 1.0
    db.execute(
        "INSERT INTO mail_outbox (message_id, recipient, subject, body, created_at,"
        " next_attempt_at) SELECT 'late.' || message_id, recipient, subject, body,"
        " created_at, created_at FROM mail_outbox ORDER BY id LIMIT 1"
    )
    await mail_settled(db_url)
    assert len(inbox.messages) == before + 1


async def test_confirming_again_is_harmless(api: Api, inbox: Inbox, db_url: str) -> None:
    await scene(api)
    assignment, owner_link, target_link = await request_assignment(api, inbox)
    for _ in range(3):
        status, page = await confirm(api, owner_link)
        assert status == 200
    assert "already" in page.lower() or "bereits" in page
    await confirm(api, target_link)
    status, page = await confirm(api, target_link)
    assert status == 200 and 'data-state="active"' in page
    events = await api.ok("GET", f"/v1/assignments/{assignment['id']}/events")
    assert len(events["events"]) == 3
    await mail_settled(db_url)
    assert len(inbox.messages) == 4  # one activation notice each, not one per click


async def test_get_of_the_link_never_confirms(
    api: Api, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    await scene(api)
    _, owner_link, _ = await request_assignment(api, inbox)
    before = snapshot(db)
    for _ in range(3):
        response = await api.client.get(path_of(owner_link))
        page = await response.text()
        assert response.status == 200
        assert "Isar Logistik GmbH" in page and "Spree Logistik GmbH" in page
        assert "+49 89 123456 0-99" in page and '<button type="submit"' in page
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert snapshot(db) == before


async def test_reset_while_pending(api: Api, inbox: Inbox, db: psycopg.Connection[Any]) -> None:
    await scene(api)
    _, owner_link, target_link = await request_assignment(api, inbox)
    await confirm(api, owner_link)
    reset = await api.ok(
        "DELETE", f"/v1/blocks/{BLOCK}/assignment", headers={"X-Acting-Customer": OWNER}
    )
    assert reset["state"] == "reset" and reset["ended_at"] is not None
    # The other side's link now tells the state, with no error trace.
    status, page = await confirm(api, target_link)
    assert status == 410 and 'data-state="reset"' in page and "Traceback" not in page
    state = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
    assert state["state"] == "reset" and state["target_confirmed"] is False
    assert queued_applies(db) == set()  # it never was live
    messages = await inbox.wait_for(4)
    assert {m["To"] for m in messages[2:]} == {OWNER_MAIL, TARGET_MAIL}
    assert all("eset" in m["Subject"] or "Zurück" in m["Subject"] for m in messages[2:])
    # The block is free for a new request.
    again = await api.ok("POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET})
    assert again["state"] == "pending" and again["id"] != reset["id"]


async def test_reset_while_active_by_the_target(
    api: Api, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    await scene(api)
    assignment, owner_link, target_link = await request_assignment(api, inbox)
    await confirm(api, owner_link)
    await confirm(api, target_link)
    db.execute("DELETE FROM apply_queue")
    reset = await api.ok(
        "DELETE", f"/v1/blocks/{BLOCK}/assignment", headers={"X-Acting-Customer": TARGET}
    )
    assert reset["state"] == "reset"
    assert queued_applies(db) == {TARGET}  # B's PBX must drop the numbers
    blocks = await api.ok("GET", f"/v1/accounts/{OWNER}/blocks")
    assert blocks["blocks"][0]["used_by_pbx"] is None
    events = await api.ok("GET", f"/v1/assignments/{assignment['id']}/events")
    last = events["events"][-1]
    assert (last["action"], last["old_state"], last["new_state"]) == ("reset", "active", "reset")
    assert (last["actor"], last["acting_customer"]) == ("portal-backend", TARGET)
    await inbox.wait_for(6)


async def test_expiry_without_both_confirmations(api: Api, inbox: Inbox, clock: FakeClock) -> None:
    await scene(api)
    assignment, owner_link, target_link = await request_assignment(api, inbox)
    await confirm(api, owner_link)
    clock.advance(days=7, seconds=-1)
    state = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
    assert state["state"] == "pending"
    clock.advance(seconds=1)
    state = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
    assert state["state"] == "expired"
    status, page = await confirm(api, target_link)
    assert status == 410 and 'data-state="expired"' in page
    messages = await inbox.wait_for(4)
    assert any(m["Subject"].startswith("Expired:") for m in messages[2:])
    assert any(m["Subject"].startswith("Abgelaufen:") for m in messages[2:])
    events = await api.ok("GET", f"/v1/assignments/{assignment['id']}/events")
    assert events["events"][-1]["action"] == "expired"
    assert events["events"][-1]["actor"] == "system"
    again = await api.ok("POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET})
    assert again["state"] == "pending"


async def test_expired_pending_assignment_does_not_block_a_new_one(
    api: Api, inbox: Inbox, clock: FakeClock
) -> None:
    await scene(api)
    first, _, _ = await request_assignment(api, inbox)
    clock.advance(days=8)
    second = await api.ok("POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET})
    assert second["id"] != first["id"]
    events = await api.ok("GET", f"/v1/assignments/{first['id']}/events")
    assert events["events"][-1]["new_state"] == "expired"


async def test_unknown_token_gets_a_page(api: Api) -> None:
    for method in ("GET", "POST"):
        response = await api.client.request(method, "/confirm/not-a-token")
        page = await response.text()
        assert response.status == 404
        assert response.content_type == "text/html"
        assert "unknown" in page and "Traceback" not in page


async def test_housekeeping_expires_untouched_requests_and_forgets_old_keys(
    api: Api, inbox: Inbox, clock: FakeClock, db: psycopg.Connection[Any], db_url: str
) -> None:
    """The minutely sweep, not a read, expires a request nobody touches again."""
    from psycopg_pool import AsyncConnectionPool

    from provisioner.mail.compose import Composer
    from provisioner.service.unit import Policy
    from provisioner.workers.tasks import housekeeping

    await scene(api)
    assignment = await api.ok(
        "POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET},
        headers={"Idempotency-Key": "old-key"},
    )  # fmt: skip
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        policy = Policy(7, "DE", "http://127.0.0.1")
        clock.advance(hours=23)
        assert await housekeeping(pool, clock, policy, Composer()) == 0
        assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (1,)
        clock.advance(days=7)
        assert await housekeeping(pool, clock, policy, Composer()) == 1
    finally:
        await pool.close()
    state = db.execute("SELECT state FROM assignments WHERE id = %s", (assignment["id"],))
    assert state.fetchone() == ("expired",)
    assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (0,)
    expiry_mails = db.execute(
        "SELECT recipient FROM mail_outbox WHERE message_id LIKE '<expired.%%'"
    ).fetchall()
    assert sorted(r[0] for r in expiry_mails) == sorted([OWNER_MAIL, TARGET_MAIL])
