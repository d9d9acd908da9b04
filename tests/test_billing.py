"""Usage per owner account from real calls: two lab Asterisks behind the lab's router,
sipp as the carrier and the phones, each node's CDR spool imported by the service, and
the usage each account reads from the API matching the calls made, second by second
of billsec. Then the same through a 60 s PostgreSQL outage: nothing lost, nothing twice.

A (K200300, Munich block muc-main) has its PBX on node `default`; B (K100200, Berlin
block ber-main) on `node-b`; A's block is assigned to B's PBX."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pgserver
import pytest
from fixtures_lab import Lab
from fixtures_mail import Inbox
from fixtures_service import Api, make_settings
from helpers import BLOCK, OWNER, TARGET
from lab_helpers import CARRIER_HOST, branch_scene, lab_service, wait_applied
from ports import free_port
from psycopg_pool import AsyncConnectionPool
from router_helpers import Platform, assign_to_b, platform_of
from sipp_peer import SipResult, run_scenario, start_scenario
from waiting import wait_until

from provisioner.db import embedded
from provisioner.service import usage
from provisioner.settings import Settings

MUNICH_DID = "+49891234560"  # B's phone 200, on A's block
BERLIN = "+49301234560"  # B's phone 100 (its block's default target)
MUNICH_TRUNK = ("k200300-muc", "Munich-trunk-1")
# Every call of these tests is in the period from yesterday to now.
SINCE = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
# How long the phones hold their calls (sipp -d) before hanging up, after call.xml's
# 1.5 s wait for a re-INVITE: 3.5 s answered (the carrier's calls: 2.5 s), half a
# second from a whole one, so a few ms of the way never change the second it counts.
HOLD_MS = 2000


def usage_rows(answer: dict[str, Any]) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    return {
        (r["block_id"], r["owner"], r["pbx"], r["direction"]): (
            r["calls"], r["answered"], r["billsec"]
        )
        for r in answer["usage"]
    }  # fmt: skip


async def records(api: Api, customer: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The account's call records, once there are `count` (the import runs every 100 ms)."""
    path = f"/v1/accounts/{customer}/calls?limit=1000&from={SINCE}"

    async def enough() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = (await api.ok("GET", path))["calls"]
        return found if len(found) >= count else None

    return await wait_until(enough, f"{customer}: fewer than {count} records", timeout, 0.1)


def held(result: SipResult) -> float:
    """Seconds from the 200 OK the caller got to its BYE, as sipp saw them."""
    answered = next(m.time for m in result.messages if m.status == 200 and "INVITE" in
                    m.headers.get("cseq", ""))  # fmt: skip
    bye = next(m.time for m in result.messages if m.method == "BYE")
    return bye - answered


async def phone(api: Api, customer: str, ext: str, body: dict[str, Any]) -> dict[str, Any]:
    made: dict[str, Any] = await api.ok(
        "PUT", f"/v1/accounts/{customer}/pbx/extensions/{ext}", body
    )
    return made


def register(node_port: int, who: dict[str, Any], port: int) -> None:
    done = run_scenario(
        "register", remote_port=node_port, service=who["sip_username"],
        username=who["sip_username"], password=who["sip_password"], local_port=port,
        variables={"expires": "300"},
    )  # fmt: skip
    assert done.ok, done.evidence()


@pytest.fixture
def billing_settings(settings: Settings) -> Settings:
    return replace(settings, billing=replace(settings.billing, import_interval_ms=100))


async def test_usage_of_owner_and_user_match_the_calls_made(
    billing_settings: Settings, clean_lab: Lab, clean_second_lab: Lab, tmp_path: Path,
    inbox: Inbox,
) -> None:  # fmt: skip
    async with platform_of(billing_settings, clean_lab, clean_second_lab, tmp_path) as scene:
        await billing_scene(scene, inbox)


async def billing_scene(scene: Platform, inbox: Inbox) -> None:
    api, node_b = scene.api, scene.labs["node-b"]
    body = {"number": "+4989123456", "range": "0-99", "mode": "pbx",
            "trunk": {"username": MUNICH_TRUNK[0], "password": MUNICH_TRUNK[1]}}  # fmt: skip
    await api.ok("PUT", f"/v1/accounts/{OWNER}/blocks/{BLOCK}", body)
    await assign_to_b(scene, inbox)
    carla = await phone(api, TARGET, "200",
                        {"name": "Carla", "site_block": BLOCK, "did": MUNICH_DID})  # fmt: skip
    await scene.routed(TARGET)
    await wait_applied(api, OWNER)
    anna = scene.phones["B"]
    carla_port, anna_port = free_port(), free_port()
    register(node_b.sip_port, carla, carla_port)
    register(node_b.sip_port, {"sip_username": anna.username, "sip_password": anna.password},
             anna_port)  # fmt: skip
    hold = ["-d", str(HOLD_MS)]

    # 1. The carrier calls Carla's Munich DID through the router (2.5 s held by it).
    answering = start_scenario("uas_answer", remote_port=node_b.sip_port, local_port=carla_port)
    inbound = await asyncio.to_thread(scene.carrier_calls, MUNICH_DID)
    assert inbound.ok and (await asyncio.to_thread(answering.wait, 15)).ok, inbound.evidence()
    # 2. Carla calls out over A's block (its trunk, A's credentials): billed to A.
    carrier = start_scenario(
        "carrier_answer_auth", remote_port=node_b.sip_port, local_ip=CARRIER_HOST,
        local_port=scene.settings.node("node-b").carrier_port,  # type: ignore[union-attr]
        variables={"trunk_user": MUNICH_TRUNK[0], "trunk_password": MUNICH_TRUNK[1]},
    )  # fmt: skip
    outbound = await asyncio.to_thread(
        run_scenario, "call", remote_port=node_b.sip_port, service=carla["sip_username"],
        username=carla["sip_username"], password=carla["sip_password"],
        local_port=carla_port, variables={"dial": "1234567"}, extra=hold,
    )  # fmt: skip
    assert outbound.ok and (await asyncio.to_thread(carrier.wait, 15)).ok, outbound.evidence()
    # 3. Anna (Berlin) calls Carla (Munich): internal, B's own.
    answering = start_scenario("uas_answer", remote_port=node_b.sip_port, local_port=carla_port)
    internal = await asyncio.to_thread(
        run_scenario, "call", remote_port=node_b.sip_port, service=anna.username,
        username=anna.username, password=anna.password, local_port=anna_port,
        variables={"dial": "200"}, extra=hold,
    )  # fmt: skip
    assert internal.ok and (await asyncio.to_thread(answering.wait, 15)).ok, internal.evidence()
    # 4. The carrier calls B's own Berlin number: B's own block, billed to B.
    answering = start_scenario("uas_answer", remote_port=node_b.sip_port, local_port=anna_port)
    own = await asyncio.to_thread(scene.carrier_calls, BERLIN)
    assert own.ok and (await asyncio.to_thread(answering.wait, 15)).ok, own.evidence()

    calls = {"in": inbound, "out": outbound, "internal": internal, "own": own}
    seconds = {name: int(held(call)) for name, call in calls.items()}
    owner_records = await records(api, OWNER, 2)
    target_records = await records(api, TARGET, 4)
    by_direction = {(r["direction"], r["block_id"]): r for r in target_records}
    for (direction, block), name in ((("inbound", BLOCK), "in"), (("outbound", BLOCK), "out"),
                                     (("internal", None), "internal"),
                                     (("inbound", "ber-main"), "own")):  # fmt: skip
        record = by_direction[(direction, block)]
        assert record["billsec"] == seconds[name], (name, record, seconds)
        assert record["disposition"] == "ANSWERED" and record["pbx"] == TARGET
    assert by_direction[("inbound", BLOCK)]["number"] == MUNICH_DID
    assert by_direction[("inbound", BLOCK)]["peer"] == "+4940999999"
    assert by_direction[("outbound", BLOCK)]["number"] == MUNICH_DID
    assert by_direction[("outbound", BLOCK)]["peer"] == "+49891234567"
    assert {r["uniqueid"] for r in owner_records} == {
        by_direction[("inbound", BLOCK)]["uniqueid"],
        by_direction[("outbound", BLOCK)]["uniqueid"],
    }

    period = f"from={SINCE}"
    owner = await api.ok("GET", f"/v1/accounts/{OWNER}/usage?{period}")
    assert usage_rows(owner) == {
        (BLOCK, OWNER, TARGET, "inbound"): (1, 1, seconds["in"]),
        (BLOCK, OWNER, TARGET, "outbound"): (1, 1, seconds["out"]),
    }
    target = await api.ok("GET", f"/v1/accounts/{TARGET}/usage?{period}")
    assert usage_rows(target) == {
        ("ber-main", TARGET, TARGET, "inbound"): (1, 1, seconds["own"]),
        (BLOCK, OWNER, TARGET, "inbound"): (1, 1, seconds["in"]),
        (BLOCK, OWNER, TARGET, "outbound"): (1, 1, seconds["out"]),
        (None, TARGET, TARGET, "internal"): (1, 1, seconds["internal"]),
    }

    # 5. A call under way when A resets the assignment: counted for B's PBX, which used
    # the block when the call started; the next call goes to A's own PBX on `default`.
    answering = start_scenario("uas_answer", remote_port=node_b.sip_port, local_port=carla_port)
    during = asyncio.create_task(asyncio.to_thread(scene.carrier_calls, MUNICH_DID))
    await call_up(node_b, carla["sip_username"])
    assert (await api.call("DELETE", f"/v1/blocks/{BLOCK}/assignment")).status == 200
    assert (await during).ok and (await asyncio.to_thread(answering.wait, 15)).ok
    await scene.routed(OWNER)
    await scene.call_rings(MUNICH_DID, "A", "default")
    # 6. A call under way on A's PBX when the block is assigned to B's again: A's PBX's;
    # the next call is B's PBX's, on node-b.
    a_phone, node_a = scene.phones["A"], scene.labs["default"]
    answering = start_scenario("uas_answer", remote_port=node_a.sip_port,
                               local_port=a_phone.port)  # fmt: skip
    during = asyncio.create_task(asyncio.to_thread(scene.carrier_calls, MUNICH_DID))
    await call_up(node_a, a_phone.username)
    await assign_to_b(scene, inbox)
    assert (await during).ok and (await asyncio.to_thread(answering.wait, 15)).ok
    await scene.routed(TARGET)
    answering = start_scenario("uas_answer", remote_port=node_b.sip_port, local_port=carla_port)
    assert (await asyncio.to_thread(scene.carrier_calls, MUNICH_DID)).ok
    assert (await asyncio.to_thread(answering.wait, 15)).ok

    owner_records = await records(api, OWNER, 6)
    last = sorted(owner_records, key=lambda r: r["started_at"])[-4:]
    assert [(r["pbx"], r["owner"], r["disposition"]) for r in last] == [
        (TARGET, OWNER, "ANSWERED"),  # under way at the reset: B's
        (OWNER, OWNER, "ANSWERED"),  # after it: A's
        (OWNER, OWNER, "ANSWERED"),  # under way at the assignment: A's
        (TARGET, OWNER, "ANSWERED"),  # after it: B's
    ], last


async def call_up(lab: Lab, endpoint: str, timeout: float = 10) -> None:
    """Until the node has the call to `endpoint` answered (a channel of it Up)."""

    async def up() -> bool:
        channels = await asyncio.to_thread(lab.cli, "core show channels concise")
        return any(f"PJSIP/{endpoint}-" in c and "!Up!" in c for c in channels.splitlines())

    await wait_until(up, f"no call to {endpoint} is up", timeout, 0.05)


@pytest.mark.slow  # PostgreSQL is away for 60 s
async def test_a_database_outage_of_60_s_loses_no_call_record_and_doubles_none(
    own_database: tuple[str, Path], clean_lab: Lab, inbox: Inbox, tmp_path: Path
) -> None:
    url, folder = own_database
    settings = make_settings(url, smtp_host="127.0.0.1", smtp_port=inbox.port,
                             port=free_port(), data=tmp_path)  # fmt: skip
    async with lab_service(settings, clean_lab) as (api, node):
        anna = await branch_scene(api)
        await wait_applied(api, TARGET)
        anna_port = free_port()
        register(clean_lab.sip_port, anna, anna_port)

        def carrier_call() -> None:
            answering = start_scenario("uas_answer", remote_port=clean_lab.sip_port,
                                       local_port=anna_port)  # fmt: skip
            call = run_scenario("carrier_call", remote_port=clean_lab.sip_port,
                                local_ip=CARRIER_HOST, variables={"dial": BERLIN})  # fmt: skip
            assert call.ok and answering.wait(15).ok, call.evidence()

        await asyncio.to_thread(carrier_call)
        assert len(await records(api, TARGET, 1)) == 1

        # PostgreSQL goes away for 60 s; three calls end meanwhile (the node needs no
        # database for them: a files node).
        running = pgserver.get_server(folder, cleanup_mode=None)  # type: ignore[attr-defined]
        stopped = time.monotonic()
        await asyncio.to_thread(running.cleanup)
        for _ in range(3):
            await asyncio.to_thread(carrier_call)
        assert clean_lab.cdr_file.read_text().count("\n") == 4  # in the node's spool
        await asyncio.sleep(max(0.0, 60 - (time.monotonic() - stopped)))
        await asyncio.to_thread(embedded.start, folder)

        # The pool and the importer come back with their backoff (up to 30 s).
        found = await records(api, TARGET, 4, timeout=90)
        assert len({(r["uniqueid"], r["sequence"]) for r in found}) == len(found) == 4
        # The whole spool read again (what a crash between the store and the offset
        # amounts to): nothing is stored twice.
        async with AsyncConnectionPool(url, min_size=1, open=False) as pool:
            await usage.restart_import(pool, node, datetime.now(UTC))
            while await usage.import_step(pool, node, settings.billing, datetime.now(UTC)):
                pass
        assert len(await records(api, TARGET, 4)) == 4
