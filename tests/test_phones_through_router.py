"""Phones through the SIP router: each PBX is a SIP domain (<slug>.pbx.lab here), its
phones register at the router's phone port (registrar and outbound proxy), and the
router relays their REGISTER (with Path), INVITE, SUBSCRIBE and in-dialog requests to
the node of their PBX, and the node's calls to them back along the Path. A PBX moved to
another node: its phones keep their configuration and land on the new node with their
next registration. Real Kamailio, the lab's two Asterisks, sipp phones."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fixtures_lab import Lab
from helpers import BLOCK, OWNER
from lab_helpers import realtime_node, until_subscribed
from ports import free_port
from router_helpers import (
    ROUTER_IP,
    Phone,
    Platform,
    node_named,
    platform_of,
    rpc,
    sip_domain,
)
from sipp_peer import assert_blind_transfer, dialog_states, run_scenario, start_scenario
from waiting import wait_until

from provisioner.settings import Settings

MUNICH = "+49891234567"  # A's block; its default target is A's phone 100


def routed_pbx(scene: Platform, customer: str) -> str | None:
    found = rpc(scene.router, "htable.get", "numbers", f"pbx:{customer.lower()}")
    value = found.get("result", {}).get("item", {}).get("value")
    return str(value) if value is not None else None


async def carrier_call_rings(scene: Platform, phone: Phone) -> None:
    invite = await scene.rings(MUNICH, phone, ROUTER_IP, scene.router.phone_port)
    assert ROUTER_IP in invite.headers.get("via", ""), f"not through the router: {invite}"


async def colleague_call_rings(
    scene: Platform, customer: str, caller: Phone, callee: Phone, dial: str
) -> None:
    answering = start_scenario("uas_answer", remote_ip=ROUTER_IP,
                               remote_port=scene.router.phone_port, local_port=callee.port,
                               timeout=15)  # fmt: skip
    call = await asyncio.to_thread(
        run_scenario, "call", remote_ip=ROUTER_IP, remote_port=scene.router.phone_port,
        service=caller.username, username=caller.username, password=caller.password,
        local_port=caller.port, variables={"dial": dial}, domain=sip_domain(customer),
        timeout=15,
    )  # fmt: skip
    answered = await asyncio.to_thread(answering.wait, 15)
    evidence = call.evidence() + "\n--- callee ---\n" + answered.evidence()
    assert call.ok, evidence
    assert answered.ok, evidence


async def two_phones_registered(scene: Platform) -> tuple[Phone, Phone]:
    """A's phone 100 and a new colleague 101, both registered through the router."""
    made = await scene.api.ok("PUT", f"/v1/accounts/{OWNER}/pbx/extensions/101",
                              {"name": "Colleague", "site_block": BLOCK})  # fmt: skip
    phones = (scene.phones["A"], Phone(made["sip_username"], made["sip_password"], free_port()))
    await scene.routed(OWNER)
    for phone in phones:
        result = scene.register_via_router(OWNER, phone)
        assert result.ok, result.evidence()
    return phones


async def test_a_phone_follows_its_pbx_to_another_node_with_no_change_to_the_phone(
    settings: Settings, clean_lab: Lab, clean_second_lab: Lab, tmp_path: Path
) -> None:
    await phones_follow_their_pbx(settings, clean_lab, clean_second_lab, tmp_path)


async def test_a_phone_follows_its_pbx_to_a_realtime_node(
    settings: Settings, clean_lab: Lab, realtime_lab: Lab, tmp_path: Path
) -> None:
    """The same, node-b a realtime node: the phones' endpoints, AORs and auths there are
    rows, their contacts (with the router's Path) Asterisk's own."""
    await realtime_node(realtime_lab, settings.database.url.value, "node-b")
    await phones_follow_their_pbx(settings, clean_lab, realtime_lab, tmp_path)


async def phones_follow_their_pbx(
    settings: Settings, first: Lab, second: Lab, tmp_path: Path
) -> None:
    """A's phones register through the router on `default`, take a carrier call and a
    colleague's; A's PBX moves to node-b; the same phones, unchanged, register again
    and take both calls there."""
    async with platform_of(settings, first, second, tmp_path) as scene:
        home = node_named(scene.settings, "default").sip_uri
        assert routed_pbx(scene, OWNER) == home
        pbx = await scene.api.ok("GET", f"/v1/accounts/{OWNER}/pbx")
        assert pbx["sip_domain"] == sip_domain(OWNER) == "k200300.pbx.lab", pbx
        phone, colleague = await two_phones_registered(scene)
        contacts = first.cli("pjsip show contacts")
        assert phone.username in contacts, contacts
        await carrier_call_rings(scene, phone)
        await colleague_call_rings(scene, OWNER, phone, colleague, "101")

        # A's PBX moves to node-b: the router sends its phones there once it is live.
        moved = time.monotonic()
        await scene.api.ok("PUT", f"/v1/accounts/{OWNER}/pbx", {"node": "node-b"})
        there = node_named(scene.settings, "node-b").sip_uri
        await wait_until(lambda: routed_pbx(scene, OWNER) == there,
                         "A's phones never routed to node-b", 30)  # fmt: skip
        routed_in = time.monotonic() - moved
        # The phones' next registration (their refresh), the same configuration.
        for who in (phone, colleague):
            result = scene.register_via_router(OWNER, who)
            assert result.ok, result.evidence()
        assert phone.username in second.cli("pjsip show contacts")
        await carrier_call_rings(scene, phone)
        await colleague_call_rings(scene, OWNER, phone, colleague, "101")
        print(f"A's phones routed to node-b {routed_in:.1f} s after the PUT")


async def test_blf_and_a_blind_transfer_work_through_the_router(
    settings: Settings, clean_lab: Lab, clean_second_lab: Lab, tmp_path: Path
) -> None:
    """A's phones 100 and 101 behind the router: 100 watches 101 (SUBSCRIBE through the
    router, NOTIFYs back along its dialog) while the carrier's call rings 101; then 101
    answers a carrier call and transfers it (REFER, in the dialog through the router)
    to 100, which gets the carrier's caller."""
    async with platform_of(settings, clean_lab, clean_second_lab, tmp_path) as scene:
        watcher, watched = await two_phones_registered(scene)

        subscriber = start_scenario(
            "subscribe", remote_ip=ROUTER_IP, remote_port=scene.router.phone_port,
            service=watcher.username, username=watcher.username, password=watcher.password,
            local_port=watcher.port, variables={"watch": "101"}, timeout=30,
            domain=sip_domain(OWNER),
        )  # fmt: skip
        await until_subscribed(clean_lab, watcher.username)  # its first NOTIFY: idle
        # 100 calls 101 (from another port: its subscription holds its own).
        caller = Phone(watcher.username, watcher.password, free_port())
        await colleague_call_rings(scene, OWNER, caller, watched, "101")
        watched_result = await asyncio.to_thread(subscriber.wait, 40)
        states = dialog_states(watched_result)
        evidence = f"states {states}\n" + watched_result.evidence()
        assert 200 in watched_result.received_statuses(), evidence
        assert "early" in states and "confirmed" in states, evidence
        assert states[-1] == "terminated", evidence

        # 101 answers the carrier's call to A's block and transfers it to 100 (on a port
        # of its own: its subscription's NOTIFYs still go to the one it watched from).
        watcher = Phone(watcher.username, watcher.password, free_port())
        result = scene.register_via_router(OWNER, watcher)
        assert result.ok, result.evidence()
        await scene.api.ok("PUT", f"/v1/accounts/{OWNER}/blocks/{BLOCK}",
                           {"number": "+4989123456", "range": "0-99", "mode": "pbx",
                            "default_target": "101"})  # fmt: skip
        await scene.routed(OWNER)
        referring = start_scenario(
            "uas_refer", remote_ip=ROUTER_IP, remote_port=scene.router.phone_port,
            service=watched.username, local_port=watched.port,
            variables={"refer_to": "100"}, timeout=20, domain=sip_domain(OWNER),
        )  # fmt: skip
        target = start_scenario("uas_answer", remote_ip=ROUTER_IP,
                                remote_port=scene.router.phone_port,
                                local_port=watcher.port, timeout=20)  # fmt: skip
        carrier = await asyncio.to_thread(scene.carrier_calls, MUNICH, timeout=20)
        referred = await asyncio.to_thread(referring.wait, 20)
        answered = await asyncio.to_thread(target.wait, 20)
        assert_blind_transfer(carrier, referred, answered)
