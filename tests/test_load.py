"""50 clients for 20 seconds on every write and read route, the same blocks and the
same PBXs, while the applier works against the lab: no 5xx, and afterwards every
invariant holds, re-checked in SQL and against the live Asterisk. Bounded in time; each
client's choices come from its own seeded random."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from fixtures_lab import Lab
from fixtures_mail import Inbox, confirm_link
from fixtures_service import ENGINEER_KEY
from helpers import BLOCK, OTHER, OWNER, TARGET, path_of
from lab_helpers import branch_scene, cologne_pbx, lab_service, wait_applied

from provisioner.settings import Settings

CLIENTS = 50
SECONDS = 20.0
Call = tuple[str, str, Any]


def choose(rnd: random.Random, inbox: Inbox) -> Call:
    ext = str(rnd.randint(100, 109))
    roll = rnd.random()
    if roll < 0.35:  # reads, as the portal shows its pages
        return "GET", rnd.choice([
            f"/v1/accounts/{TARGET}", f"/v1/accounts/{TARGET}/pbx",
            f"/v1/accounts/{OWNER}/blocks", f"/v1/blocks/{BLOCK}/assignment",
            f"/v1/accounts/{TARGET}/pbx/extensions", f"/v1/accounts/{TARGET}/pbx/ring-groups",
            f"/v1/accounts/{TARGET}/pbx/config", f"/v1/accounts/{TARGET}/pbx/config/diff",
            f"/v1/accounts/{OTHER}/pbx/config",
        ]), None  # fmt: skip
    if roll < 0.55:
        return "PUT", f"/v1/accounts/{TARGET}/pbx/extensions/{ext}", {
            "name": f"Phone {ext}", "site_block": "ber-main",
            "pickup_group": rnd.choice([None, "sales"]),
        }  # fmt: skip
    if roll < 0.62:
        return "PUT", f"/v1/accounts/{OTHER}/pbx/extensions/{ext}", {
            "name": f"Köln {ext}", "site_block": "cgn-main",
        }  # fmt: skip
    if roll < 0.68:
        return "PUT", f"/v1/accounts/{TARGET}/pbx/ring-groups/600", {
            "name": "Reception", "strategy": rnd.choice(["ringall", "hunt"]),
            "members": ["100"], "ring_seconds": rnd.randint(5, 30),
        }  # fmt: skip
    if roll < 0.76:
        return "POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET}
    if roll < 0.82:
        return "DELETE", f"/v1/blocks/{BLOCK}/assignment", None
    requests = confirm_mails(inbox)
    if roll < 0.94 and requests:
        return "POST", path_of(confirm_link(rnd.choice(requests[-6:]))), None
    # B chooses where A's unrouted numbers ring in B's PBX (404 while not B's to use).
    return "PUT", f"/v1/accounts/{TARGET}/pbx/blocks/{BLOCK}", {
        "default_target": rnd.choice(["200", "100"]),
    }  # fmt: skip


def confirm_mails(inbox: Inbox) -> list[Any]:
    return [m for m in inbox.messages if "confirm_request" in str(m["Message-ID"])]


@pytest.mark.slow
async def test_fifty_clients_get_no_5xx_and_leave_every_invariant_true(
    settings: Settings, clean_lab: Lab, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    async with lab_service(settings, clean_lab) as (api, _node):
        await branch_scene(api)
        await cologne_pbx(api)
        statuses: Counter[int] = Counter()
        tried: set[tuple[str, str]] = set()
        succeeded: set[tuple[str, str]] = set()
        failures: list[str] = []
        deadline = time.monotonic() + SECONDS

        async def client(number: int) -> None:
            rnd = random.Random(number)
            while time.monotonic() < deadline:
                method, path, body = choose(rnd, inbox)
                headers = (
                    {"Idempotency-Key": f"c{number}-{rnd.random()}"} if rnd.random() < 0.2 else None
                )
                response = await api.call(method, path, body, headers=headers)
                text = await response.text()
                statuses[response.status] += 1
                kind = (method, re.sub(r"^/confirm/.*|/[1-9][0-9]{2}$", "/X", path))
                tried.add(kind)
                if response.status < 300:
                    succeeded.add(kind)
                if response.status >= 500:
                    failures.append(f"{method} {path}: {response.status} {text[:300]}")

        await asyncio.gather(*(client(n) for n in range(CLIENTS)))
        total = sum(statuses.values())
        print(f"load: {total} requests in {SECONDS:.0f} s by {CLIENTS} clients: {dict(statuses)}")
        assert not failures, failures[:5]
        # Not a count (that is the machine's speed): every kind of request the clients
        # sent succeeded at least once under the load, and none failed with a 5xx. (A
        # confirm link, drawn from the last six requests, is nearly always of an
        # assignment another client has reset meanwhile: 410 is its right answer.)
        missing = {kind for kind in tried - succeeded if not kind[1].startswith("/X")}
        assert missing == set(), sorted(missing)
        assert ("POST", "/X") in tried, "no confirm link was tried"

        # Let the applier and the mail sender finish what the load left them.
        settle = time.monotonic() + 90
        while db.execute(
            "SELECT (SELECT count(*) FROM apply_queue) + (SELECT count(*) FROM mail_outbox"
            " WHERE sent_at IS NULL)"
        ).fetchone() != (0,):
            assert time.monotonic() < settle, "queue and outbox did not drain"
            await asyncio.sleep(0.2)
        for customer in (TARGET, OTHER):
            state = await wait_applied(api, customer, timeout=60)
            assert state["apply_error"] is None, state
        check = await api.ok("GET", "/v1/nodes/default/check", key=ENGINEER_KEY)
        assert check["ok"], check

    # At most one live assignment per block.
    assert (
        db.execute(
            "SELECT block_id FROM assignments WHERE state IN ('pending', 'active')"
            " GROUP BY block_id HAVING count(*) > 1"
        ).fetchall()
        == []
    )
    # Every assignment's last event says the state it is in; active ones were confirmed
    # by both sides, ended ones carry their end.
    assert (
        db.execute(
            "SELECT a.id FROM assignments a JOIN LATERAL (SELECT new_state FROM assignment_events e"
            " WHERE e.assignment_id = a.id ORDER BY e.id DESC LIMIT 1) last ON true"
            " WHERE last.new_state <> a.state"
        ).fetchall()
        == []
    )
    assert (
        db.execute(
            "SELECT id FROM assignments WHERE (state = 'active' AND (owner_confirmed_at IS NULL"
            " OR target_confirmed_at IS NULL OR activated_at IS NULL))"
            " OR (state IN ('reset', 'expired') AND ended_at IS NULL)"
        ).fetchall()
        == []
    )
    # Every mail went out exactly once, and each assignment asked both sides once.
    ids = [str(m["Message-ID"]) for m in inbox.messages]
    assert len(ids) == len(set(ids))
    created = db.execute("SELECT count(*) FROM assignments").fetchone()
    assert created is not None and len(confirm_mails(inbox)) == 2 * created[0]
    # Every PBX is applied at its latest revision.
    assert (
        db.execute(
            "SELECT p.customer FROM pbxes p LEFT JOIN apply_state s ON s.pbx_id = p.id"
            " WHERE s.state IS DISTINCT FROM 'applied' OR s.revision IS DISTINCT FROM"
            " (SELECT max(revision) FROM config_revisions r WHERE r.pbx_id = p.id)"
        ).fetchall()
        == []
    )
