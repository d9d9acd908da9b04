"""The promise to the customer, proven with real SIP calls (sipp) through the lab's Asterisk.

The scene is built only through the public API and the links in the mails: account B in
Berlin has a cloud PBX; account A in Munich assigns its block to it and both confirm.
Phones 100 and 101 are sited in Berlin, 200 and 201 in Munich with DIDs from A's block;
ring group 600 has 101 and 201; pickup group "sales" has 100 and 200. A sipp "carrier"
on 127.0.0.2 stands for the network. Account C, with its own PBX and phone 100, proves
isolation. On failure, each assertion prints the SIP evidence.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from fixtures_lab import Lab, ami_of
from fixtures_mail import Inbox
from fixtures_service import Api, FakeClock
from helpers import BLOCK, OTHER, OWNER, TARGET, path_of, request_assignment
from lab_helpers import (
    CARRIER_HOST,
    branch_scene,
    cologne_pbx,
    lab_service,
    until_channel,
    until_subscribed,
    wait_applied,
)
from panoramisk import Manager
from ports import free_port
from sipp_peer import (
    SipResult,
    assert_blind_transfer,
    dialog_states,
    run_scenario,
    start_scenario,
)

from provisioner.settings import Settings

BERLIN_TRUNK = ("k100200-ber", "Berlin-trunk-1")
MUNICH_TRUNK = ("k200300-muc", "Munich-trunk-1")


@dataclass(frozen=True)
class Phone:
    ext: str
    username: str
    password: str
    port: int


@dataclass
class Scene:
    api: Api
    lab: Lab
    carrier_port: int
    phones: dict[str, Phone]
    other: Phone  # C's phone 100
    cdrs: list[dict[str, str]]
    ami: Manager

    def register(self, phone: Phone) -> None:
        result = run_scenario(
            "register", remote_port=self.lab.sip_port, service=phone.username,
            username=phone.username, password=phone.password, local_port=phone.port,
            variables={"expires": "300"},
        )  # fmt: skip
        assert result.ok, result.evidence()

    def call(
        self, caller: Phone, dial: str, timeout: float = 15, scenario: str = "call"
    ) -> SipResult:
        return run_scenario(
            scenario, remote_port=self.lab.sip_port, service=caller.username,
            username=caller.username, password=caller.password, local_port=caller.port,
            variables={"dial": dial}, timeout=timeout,
        )  # fmt: skip

    def carrier_calls(self, dial: str, timeout: float = 20) -> SipResult:
        """The network calls `dial` (E.164) from the carrier's address."""
        return run_scenario(
            "carrier_call", remote_port=self.lab.sip_port, local_ip=CARRIER_HOST,
            variables={"dial": dial}, timeout=timeout,
        )  # fmt: skip

    async def cdr(self, **match: str) -> dict[str, str]:
        for _ in range(100):
            for record in self.cdrs:
                if all(record.get(k, "").startswith(v) for k, v in match.items()):
                    return record
            await asyncio.sleep(0.1)
        raise AssertionError(f"no CDR with {match} among {self.cdrs}")


async def put_phone(api: Api, customer: str, ext: str, body: dict[str, Any]) -> Phone:
    created = await api.ok("PUT", f"/v1/accounts/{customer}/pbx/extensions/{ext}", body)
    return Phone(ext, created["sip_username"], created["sip_password"], free_port())


@pytest.fixture
async def scene(
    settings: Settings, clock: FakeClock, mode_lab: Lab, inbox: Inbox
) -> AsyncIterator[Scene]:
    """The scene on the lab in each PJSIP mode: files, and realtime (the tenants'
    endpoints, AORs and auths from PostgreSQL); every call test runs on both."""
    del clock  # the assignment flow may use it; the applier runs on real time
    cdrs: list[dict[str, str]] = []
    clean_lab = mode_lab
    async with ami_of(clean_lab) as ami, lab_service(settings, clean_lab) as (api, node):
        ami.register_event("Cdr", lambda _manager, event: cdrs.append(dict(event)))
        anna = await branch_scene(api)
        _, owner_link, target_link = await request_assignment(api, inbox)
        assert (await api.client.post(path_of(owner_link))).status == 200
        assert (await api.client.post(path_of(target_link))).status == 200
        phones = {
            "100": Phone("100", anna["sip_username"], anna["sip_password"], free_port()),
            "101": await put_phone(
                api,
                TARGET,
                "101",
                {"name": "Ben Berlin", "site_block": "ber-main", "did": "+49301234561"},
            ),
            "200": await put_phone(
                api,
                TARGET,
                "200",
                {
                    "name": "Carla München",
                    "site_block": BLOCK,
                    "did": "+49891234560",
                    "pickup_group": "sales",
                },
            ),
            "201": await put_phone(
                api,
                TARGET,
                "201",
                {"name": "Dirk München", "site_block": BLOCK, "did": "+49891234561"},
            ),
        }
        await api.ok(
            "PUT",
            f"/v1/accounts/{TARGET}/pbx/ring-groups/600",
            {
                "name": "Empfang",
                "strategy": "ringall",
                "members": ["101", "201"],
                "ring_seconds": 20,
            },
        )
        emil = await cologne_pbx(api)
        other = Phone("100", emil["sip_username"], emil["sip_password"], free_port())
        await wait_applied(api, TARGET)
        await wait_applied(api, "K300400")
        yield Scene(api, clean_lab, node.carrier_port, phones, other, cdrs, ami)


def invite_ok(result: SipResult) -> bool:
    return any(m.status == 200 and "INVITE" in m.headers.get("cseq", "") for m in result.messages)


async def test_short_dialing_across_sites(scene: Scene) -> None:
    for caller, callee in (("100", "200"), ("201", "101")):
        phone = scene.phones[callee]
        scene.register(phone)
        answering = start_scenario(
            "uas_answer", remote_port=scene.lab.sip_port, local_port=phone.port
        )
        call = await asyncio.to_thread(scene.call, scene.phones[caller], callee)
        answered = await asyncio.to_thread(answering.wait, 20)
        evidence = call.evidence() + "\n--- callee ---\n" + answered.evidence()
        assert call.ok and invite_ok(call), evidence
        assert answered.ok, evidence
        invite = next(m for m in answered.messages if m.method == "INVITE")
        assert caller in invite.headers["from"], answered.evidence()


async def test_inbound_to_a_moved_number_rings_the_phone_billed_to_the_owner(
    scene: Scene,
) -> None:
    phone = scene.phones["200"]
    scene.register(phone)
    answering = start_scenario("uas_answer", remote_port=scene.lab.sip_port, local_port=phone.port)
    call = await asyncio.to_thread(scene.carrier_calls, "+49891234560")
    answered = await asyncio.to_thread(answering.wait, 20)
    assert call.ok, call.evidence()
    assert answered.ok, answered.evidence()
    cdr = await scene.cdr(Source="+4940999999", DestinationChannel="PJSIP/k100200-200")
    assert cdr["AccountCode"] == OWNER and cdr["Disposition"] == "ANSWERED", cdr


@pytest.mark.parametrize(
    ("caller", "dial", "expected_uri", "expected_from", "trunk", "account"),
    [
        ("200", "1234567", "+49891234567", "+49891234560", MUNICH_TRUNK, OWNER),
        ("100", "1234567", "+49301234567", "+49301234560", BERLIN_TRUNK, TARGET),
        ("200", "112", "112", "+49891234560", MUNICH_TRUNK, OWNER),
        ("100", "112", "112", "+49301234560", BERLIN_TRUNK, TARGET),
        ("201", "004319876543", "+4319876543", "+49891234561", MUNICH_TRUNK, OWNER),
        ("101", "0221123456", "+49221123456", "+49301234561", BERLIN_TRUNK, TARGET),
    ],
    ids=["munich-local", "berlin-local", "munich-112", "berlin-112", "international",
         "national"],
)  # fmt: skip
async def test_outbound_by_site_over_the_caller_id_owners_trunk(
    scene: Scene, caller: str, dial: str, expected_uri: str, expected_from: str,
    trunk: tuple[str, str], account: str,
) -> None:  # fmt: skip
    carrier = start_scenario(
        "carrier_answer_auth", remote_port=scene.lab.sip_port, local_ip=CARRIER_HOST,
        local_port=scene.carrier_port,
        variables={"trunk_user": trunk[0], "trunk_password": trunk[1]},
    )  # fmt: skip
    call = await asyncio.to_thread(scene.call, scene.phones[caller], dial)
    received = await asyncio.to_thread(carrier.wait, 20)
    evidence = call.evidence() + "\n--- carrier ---\n" + received.evidence()
    invites = [m for m in received.messages if m.method == "INVITE"]
    assert invites, evidence
    assert invites[0].first_line.startswith(f"INVITE sip:{expected_uri}@"), evidence
    assert f"sip:{expected_from}@" in invites[0].headers["from"], evidence
    # The carrier answered only after the digest matched this block's trunk credentials.
    assert received.ok and call.ok and invite_ok(call), evidence
    cdr = await scene.cdr(Destination=dial)
    assert cdr["AccountCode"] == account, cdr


def final_status(result: SipResult) -> int | None:
    """The last final answer (>= 200) to an INVITE."""
    finals = [
        m.status
        for m in result.messages
        if m.status and m.status >= 200 and "INVITE" in m.headers.get("cseq", "")
    ]
    return finals[-1] if finals else None


async def test_isolation_between_pbxs(scene: Scene) -> None:
    # Positive control: C's phone authenticates and reaches C's own extension.
    colleague = await put_phone(
        scene.api, OTHER, "101", {"name": "Emil 2", "site_block": "cgn-main"}
    )
    await wait_applied(scene.api, OTHER)
    scene.register(colleague)
    own = start_scenario("uas_answer", remote_port=scene.lab.sip_port,
                         local_port=colleague.port, timeout=15)  # fmt: skip
    reached = await asyncio.to_thread(scene.call, scene.other, "101", 10)
    answered_own = await asyncio.to_thread(own.wait, 20)
    assert reached.ok and invite_ok(reached), reached.evidence()
    assert answered_own.ok, answered_own.evidence()

    target = scene.phones["200"]
    scene.register(target)
    answering = start_scenario("uas_answer", remote_port=scene.lab.sip_port,
                               local_port=target.port,
                               timeout=8)  # fmt: skip
    for dial in ("200", "**200", "600"):
        call = await asyncio.to_thread(scene.call, scene.other, dial, 6)
        assert not invite_ok(call), f"C's phone reached B's {dial}:\n{call.evidence()}"
        # Refused after authenticating (challenged, then answered by C's dialplan), not
        # for the credentials: 200 and 600 have no route there (404, or 484 where they
        # begin a longer pattern, as local numbers do).
        assert 401 in call.received_statuses(), call.evidence()
        assert final_status(call) not in (None, 401, 403, 407), call.evidence()
        if dial != "**200":
            assert final_status(call) in (404, 484), call.evidence()
    watched = await asyncio.to_thread(
        run_scenario, "subscribe", remote_port=scene.lab.sip_port,
        service=scene.other.username, username=scene.other.username,
        password=scene.other.password, local_port=scene.other.port,
        variables={"watch": "200"}, timeout=6,
    )  # fmt: skip
    subscribed = [m for m in watched.messages
                  if m.status == 200 and "SUBSCRIBE" in m.headers.get("cseq", "")]  # fmt: skip
    assert not subscribed, f"C subscribed to B's 200:\n{watched.evidence()}"
    never = await asyncio.to_thread(answering.wait, 15)
    assert not any(m.method == "INVITE" for m in never.messages), never.evidence()

    # No credentials, or wrong ones: nothing.
    stranger = replace(scene.phones["100"], password="not-the-password")
    call = await asyncio.to_thread(scene.call, stranger, "200", 6)
    assert not invite_ok(call), call.evidence()
    refused = run_scenario(
        "register", remote_port=scene.lab.sip_port, service=stranger.username,
        username=stranger.username, password=stranger.password,
        variables={"expires": "300"}, timeout=5,
    )  # fmt: skip
    assert 200 not in refused.received_statuses(), refused.evidence()


async def test_reset_takes_the_moved_numbers_out_of_the_pbx(scene: Scene) -> None:
    await scene.api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment")
    await wait_applied(scene.api, TARGET)
    call = await asyncio.to_thread(scene.carrier_calls, "+49891234560", 6)
    assert not call.ok and not invite_ok(call), call.evidence()
    for path in scene.lab.output_dir.rglob("*.conf"):
        assert "+4989123456" not in path.read_text(), path


async def ring_group_call(scene: Scene, answer: str, ring: str) -> tuple[SipResult, ...]:
    """100 calls 600; `answer` picks up, `ring` only rings."""
    for ext in (answer, ring):
        scene.register(scene.phones[ext])
    answering = start_scenario(
        "uas_answer",
        remote_port=scene.lab.sip_port,
        local_port=scene.phones[answer].port,
        timeout=25,
    )
    ringing = start_scenario(
        "uas_ring", remote_port=scene.lab.sip_port, local_port=scene.phones[ring].port, timeout=25
    )
    call = await asyncio.to_thread(scene.call, scene.phones["100"], "600", 25)
    return call, await asyncio.to_thread(answering.wait, 30), await asyncio.to_thread(
        ringing.wait, 30
    )  # fmt: skip


def arrival(result: SipResult) -> float:
    invite = next(m for m in result.messages if m.method == "INVITE")
    return invite.time


async def test_ring_group_ringall_rings_both_sites_together(scene: Scene) -> None:
    call, answered, rang = await ring_group_call(scene, answer="201", ring="101")
    evidence = "\n---\n".join(r.evidence() for r in (call, answered, rang))
    assert call.ok and invite_ok(call), evidence
    assert answered.ok and rang.ok, evidence  # 101 rang and was cancelled when 201 answered
    # Together: far sooner than the 5 s a hunt group gives each member (test below).
    assert abs(arrival(answered) - arrival(rang)) < 2, evidence


async def test_ring_group_hunt_rings_in_order(scene: Scene) -> None:
    await scene.api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/ring-groups/600", {
        "name": "Empfang", "strategy": "hunt", "members": ["101", "201"], "ring_seconds": 5,
    })  # fmt: skip
    await wait_applied(scene.api, TARGET)
    call, answered, rang = await ring_group_call(scene, answer="201", ring="101")
    evidence = "\n---\n".join(r.evidence() for r in (call, answered, rang))
    assert call.ok and invite_ok(call), evidence
    assert answered.ok and rang.ok, evidence
    waited = arrival(answered) - arrival(rang)
    assert 4.5 < waited < 7, f"201 rang {waited:.1f} s after 101\n{evidence}"


@pytest.mark.parametrize("dial", ["*8", "**200"])
async def test_pickup_across_sites(scene: Scene, dial: str) -> None:
    """101 calls 200 (Munich); 200 rings; 100 (Berlin) picks the call up."""
    ringing_phone = scene.phones["200"]
    scene.register(ringing_phone)
    ringing = start_scenario("uas_ring", remote_port=scene.lab.sip_port,
                             local_port=ringing_phone.port, timeout=20)  # fmt: skip
    caller = asyncio.create_task(
        asyncio.to_thread(scene.call, scene.phones["101"], "200", 20, "call_until_bye")
    )
    await until_channel(scene.lab, "PJSIP/k100200-200-", "Ringing")
    picker = await asyncio.to_thread(scene.call, scene.phones["100"], dial, 15)
    caller_result = await caller
    rang = await asyncio.to_thread(ringing.wait, 20)
    evidence = "\n---\n".join(r.evidence() for r in (picker, caller_result, rang))
    assert picker.ok and invite_ok(picker), evidence  # 100 got the call
    assert caller_result.ok and invite_ok(caller_result), evidence  # 101 was connected
    assert rang.ok and any(m.method == "CANCEL" for m in rang.messages), evidence


async def test_blf_shows_ringing_and_talking_across_sites(scene: Scene) -> None:
    watcher, watched = scene.phones["100"], scene.phones["200"]
    scene.register(watched)
    subscriber = start_scenario(
        "subscribe", remote_port=scene.lab.sip_port, service=watcher.username,
        username=watcher.username, password=watcher.password, local_port=watcher.port,
        variables={"watch": "200"}, timeout=30,
    )  # fmt: skip
    await until_subscribed(scene.lab, watcher.username)  # the first NOTIFY says idle
    answering = start_scenario("uas_answer", remote_port=scene.lab.sip_port,
                               local_port=watched.port)  # fmt: skip
    call = await asyncio.to_thread(scene.call, scene.phones["101"], "200")
    await asyncio.to_thread(answering.wait, 20)
    watched_result = await asyncio.to_thread(subscriber.wait, 40)
    states = dialog_states(watched_result)
    evidence = f"states {states}\n" + watched_result.evidence() + "\n---\n" + call.evidence()
    # (The subscriber ends by waiting out a NOTIFY that never comes, which sipp counts
    # as a failed call: judge it by what it received.)
    assert call.ok, evidence
    assert 200 in watched_result.received_statuses(), evidence
    assert states and states[0] in ("idle", "terminated"), evidence
    assert "early" in states, evidence  # ringing
    assert "confirmed" in states, evidence  # talking
    assert states.index("early") < states.index("confirmed"), evidence
    assert states[-1] == "terminated", evidence  # idle again after the call


async def test_blind_transfer_to_the_other_site(scene: Scene) -> None:
    """The carrier calls B's main number; 100 (Berlin) answers and transfers to 201
    (Munich) with REFER; 201 gets the carrier's call."""
    transferer, target = scene.phones["100"], scene.phones["201"]
    for phone in (transferer, target):
        scene.register(phone)
    referring = start_scenario(
        "uas_refer", remote_port=scene.lab.sip_port, service=transferer.username,
        local_port=transferer.port, variables={"refer_to": "201"}, timeout=20,
    )  # fmt: skip
    answering = start_scenario("uas_answer", remote_port=scene.lab.sip_port,
                               local_port=target.port, timeout=20)  # fmt: skip
    call = await asyncio.to_thread(scene.carrier_calls, "+49301234560")
    referred = await asyncio.to_thread(referring.wait, 20)
    answered = await asyncio.to_thread(answering.wait, 20)
    assert_blind_transfer(call, referred, answered)


async def bridged_with(ami: Manager, prefix: str) -> set[str]:
    """Names of the channels in the same bridge as the channel named `prefix…`."""
    reply: Any = await ami.send_action({"Action": "CoreShowChannels"}, as_list=True)
    channels = [m for m in reply if m.get("Event") == "CoreShowChannel"]
    bridges = {m.BridgeId for m in channels if m.Channel.startswith(prefix) and m.BridgeId}
    return {m.Channel for m in channels if m.BridgeId in bridges}


async def test_attended_transfer_to_the_other_site(scene: Scene) -> None:
    ami = scene.ami
    """100 (Berlin) calls out over B's trunk, consults 201 (Munich), and transfers the
    far end to 201 with REFER/Replaces: the carrier ends up talking to 201."""
    transferer, target = scene.phones["100"], scene.phones["201"]
    scene.register(target)
    twin = f"127.0.0.1:{free_port()}"
    # A Call-ID and a port of this run's own: the lab of the other PJSIP mode may still
    # hold the REFER subscription of its own run (expires 600 s) and NOTIFY its phone.
    run = secrets.token_hex(4)
    carrier = start_scenario(
        "carrier_answer_auth", remote_port=scene.lab.sip_port, local_ip=CARRIER_HOST,
        local_port=scene.carrier_port,
        variables={"trunk_user": BERLIN_TRUNK[0], "trunk_password": BERLIN_TRUNK[1]},
        timeout=15,
    )  # fmt: skip
    answering = start_scenario("uas_answer", remote_port=scene.lab.sip_port,
                               local_port=target.port, timeout=15)  # fmt: skip
    main = start_scenario(
        "attended_main", remote_port=scene.lab.sip_port, service=transferer.username,
        username=transferer.username, password=transferer.password,
        variables={"dial": "1234567", "refer_to": "201"}, timeout=15,
        local_port=free_port(),
        extra=["-3pcc", twin, "-cid_str", f"attended-main-{run}-%u@127.0.0.1"],
    )  # fmt: skip
    await until_channel(scene.lab, "PJSIP/k100200-trunk-ber-main-", "Up")  # first call up
    consult = start_scenario(
        "attended_consult", remote_port=scene.lab.sip_port, service=transferer.username,
        username=transferer.username, password=transferer.password,
        variables={"dial": "201", "main_call": f"attended-main-{run}-1@127.0.0.1"},
        timeout=15, local_port=free_port(),
        # No "@" in this Call-ID: it travels inside the Refer-To URI's Replaces.
        extra=["-3pcc", twin, "-cid_str", f"attended-consult-{run}-%u-%p"],
    )  # fmt: skip
    referred = await asyncio.to_thread(main.wait, 20)
    # The transfer is done when the carrier's leg is bridged with 201.
    deadline = time.monotonic() + 15
    while True:
        bridged = await bridged_with(ami, "PJSIP/k100200-trunk-ber-main-")
        if any(c.startswith("PJSIP/k100200-201-") for c in bridged):
            break
        if time.monotonic() > deadline:
            break  # the assertions below say what was there instead
        await asyncio.sleep(0.05)
    await ami.send_action({"Action": "Hangup", "Channel": "/^PJSIP/k100200-/"})
    results = [referred] + [
        await asyncio.to_thread(r.wait, 20) for r in (consult, answering, carrier)
    ]
    evidence = f"bridged: {bridged}\n" + "\n---\n".join(r.evidence() for r in results)
    assert 202 in referred.received_statuses(), evidence
    # The carrier's leg now talks to 201; the transferer is out of the bridge.
    assert any(c.startswith("PJSIP/k100200-201-") for c in bridged), evidence
    assert not any(c.startswith("PJSIP/k100200-100-") for c in bridged), evidence
