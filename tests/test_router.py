"""Two Asterisk nodes behind the SIP router (Kamailio), against the real things: the
lab's two Asterisks, Kamailio from Debian loading its table from PostgreSQL, sipp as the
carrier and as phones.

A (K200300, Munich block) has its PBX on node `default`, B (K100200, Berlin block) on
node `node-b`. The carrier only ever talks to the router."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from fixtures_lab import LAB, Lab
from fixtures_mail import Inbox
from helpers import BLOCK, OWNER, TARGET
from lab_helpers import CARRIER_HOST, console_env, lab_service, realtime_node, wait_applied
from panoramisk import Manager
from ports import free_port, free_ports_in_a_row
from router_helpers import (
    ROUTER_IP,
    STRANGER_IP,
    Phone,
    Platform,
    RouterLab,
    alive,
    assign_to_b,
    final_status,
    platform_behind,
    platform_of,
    reader_url,
    routed_uri,
    rpc,
    running_router,
)
from sipp_peer import assert_blind_transfer, run_scenario, start_scenario
from waiting import wait_for, wait_until

from bench.sip import Prober, RingingPhone
from provisioner.db import pjsip_rows
from provisioner.settings import Settings

MUNICH = "+49891234567"  # A's block muc-main, no extension of its own: the default target
MUNICH_KEY = "+4989123456/11"  # the router's key for it: every 11-digit number of the block
BERLIN = "+49301234560"  # B's block ber-main


@pytest.fixture
async def two_nodes(
    settings: Settings, clean_lab: Lab, clean_second_lab: Lab, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with platform_of(settings, clean_lab, clean_second_lab, tmp_path) as scene:
        yield scene


@pytest.fixture(params=["files", "realtime"])
async def two_nodes_each(
    request: pytest.FixtureRequest, settings: Settings, clean_lab: Lab, tmp_path: Path
) -> AsyncIterator[Platform]:
    """The platform with node-b in each PJSIP mode: a realtime node-b reads its rows
    (the carrier's too) from this test's database; nothing is repaired by hand."""
    if request.param == "files":
        second: Lab = request.getfixturevalue("clean_second_lab")
    else:
        second = request.getfixturevalue("realtime_lab")
        await realtime_node(second, settings.database.url.value, "node-b")
    async with platform_of(settings, clean_lab, second, tmp_path) as scene:
        yield scene


async def test_numbers_follow_their_pbx_across_nodes(
    two_nodes_each: Platform, inbox: Inbox
) -> None:
    scene = two_nodes_each
    # A's number rings A's phone on node default; B's rings B's on node-b.
    await scene.call_rings(MUNICH, "A", "default")
    await scene.call_rings(BERLIN, "B", "node-b")

    # A's block assigned to B's PBX: its numbers now ring on node-b, billed to A.
    await assign_to_b(scene, inbox)
    await scene.routed(TARGET)
    await wait_applied(scene.api, OWNER)
    second = Manager(host="127.0.0.1", port=scene.labs["node-b"].ami_port,
                     username=scene.labs["node-b"].ami_user,
                     secret=scene.labs["node-b"].ami_secret, ping_delay=0)  # fmt: skip
    cdrs: list[dict[str, str]] = []
    second.register_event("Cdr", lambda _m, event: cdrs.append(dict(event)))
    await asyncio.wait_for(second.connect(), 10)
    try:
        await scene.call_rings(MUNICH, "B", "node-b")
        record = await wait_until(
            lambda: next((c for c in cdrs if answered_by_b(c)), None),
            lambda: f"no CDR of B's answer among {cdrs}",
            10,
            0.1,
        )
        assert record.get("AccountCode") == OWNER, record  # billed to A, on node-b
    finally:
        second.close()
    # Node default no longer has the block; the router table says node-b.
    assert "muc-main" not in scene.labs["default"].cli(f"dialplan show {MUNICH}@carrier-in")
    assert routed_uri(scene.router, MUNICH) == node_uri(scene, "node-b")

    # The reset brings them back to A on node default.
    assert (await scene.api.call("DELETE", f"/v1/blocks/{BLOCK}/assignment")).status == 200
    await scene.routed(OWNER)
    await wait_applied(scene.api, TARGET)
    await scene.call_rings(MUNICH, "A", "default")

    # B's PBX moves to node default: its own numbers follow it.
    await scene.api.ok("PUT", f"/v1/accounts/{TARGET}/pbx", {"node": "default"})
    await scene.routed(TARGET)
    await scene.call_rings(BERLIN, "B", "default")


async def test_the_router_refuses_unknown_numbers_and_strangers(two_nodes: Platform) -> None:
    scene = two_nodes
    before = {name: processed(lab) for name, lab in scene.labs.items()}
    unknown = await asyncio.to_thread(scene.carrier_calls, "+4940555000")
    assert final_status(unknown) == 404, unknown.evidence()
    reply = next(m for m in unknown.messages if m.status == 404)
    assert "provisioner router" in reply.headers.get("server", ""), unknown.evidence()
    stranger = await asyncio.to_thread(scene.carrier_calls, MUNICH, STRANGER_IP)
    assert final_status(stranger) == 403, stranger.evidence()
    # Neither reached a node: no call was set up there.
    assert {name: processed(lab) for name, lab in scene.labs.items()} == before


async def test_a_router_killed_mid_change_routes_right_after_restart(
    two_nodes: Platform, inbox: Inbox
) -> None:
    """The router is killed (-9) before a block's switch: the change waits, and goes
    through once the router is back."""
    scene = two_nodes
    scene.router.kill()
    await assign_to_b(scene, inbox)
    # B's config goes live; the router change waits, with the reason; A keeps serving.
    state = await wait_for(
        lambda: scene.api.ok("GET", f"/v1/accounts/{TARGET}/pbx/config"),
        lambda config: config["live"]["router"] == "pending",
        "B's router state never pending", 20, 0.1,
    )  # fmt: skip
    assert state["live"]["router_error"], state
    feed = await scene.api.ok("GET", "/v1/events?after=0&limit=500")
    pending = [e["data"] for e in feed["events"] if e["type"] == "router.pending"]
    assert any(d["customer"] == TARGET and BLOCK in d["blocks"] and d["error"] for d in pending)
    assert "k200300-in-muc-main" in scene.labs["default"].cli(f"dialplan show {MUNICH}@carrier-in")

    scene.router.up()
    restarted = time.monotonic()
    await scene.routed(TARGET, timeout=10)
    assert time.monotonic() - restarted < 10
    await wait_applied(scene.api, OWNER)
    await scene.call_rings(MUNICH, "B", "node-b")


async def test_a_hand_edited_router_entry_is_found_and_repaired(two_nodes: Platform) -> None:
    scene = two_nodes
    assert (await scene.api.ok("GET", "/v1/nodes/default/check"))["ok"]
    rpc(scene.router, "htable.sets", "numbers", MUNICH_KEY, "sip:127.0.0.9:5060")
    found = await scene.api.ok("GET", "/v1/nodes/default/check")
    assert not found["ok"]
    assert any(MUNICH_KEY in p and "127.0.0.9" in p for p in found["problems"]), found
    # The engineer's console: `provisioner check` finds it, `--repair` puts it back.
    env = console_env(
        scene.settings.asterisk.nodes, scene.settings.database.url.value,
        router_url=scene.router.rpc_url,
    )  # fmt: skip

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "provisioner", "check", *args],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip

    found_by_console = await asyncio.to_thread(check)
    assert found_by_console.returncode == 1, found_by_console.stdout + found_by_console.stderr
    assert "(router)" in found_by_console.stdout and MUNICH_KEY in found_by_console.stdout
    repaired = await asyncio.to_thread(check, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert routed_uri(scene.router, MUNICH) == node_uri(scene, "default")
    assert (await scene.api.ok("GET", "/v1/nodes/default/check"))["ok"]
    await scene.call_rings(MUNICH, "A", "default")


def node_uri(scene: Platform, name: str) -> str:
    node = scene.settings.node(name)
    assert node is not None
    return node.sip_uri


def processed(lab: Lab) -> int:
    """Asterisk's count of calls processed since it started."""
    line = next(x for x in lab.cli("core show calls").splitlines() if "processed" in x)
    return int(line.split()[0])


def answered_by_b(cdr: dict[str, str]) -> bool:
    return cdr.get("DestinationChannel", "").startswith("PJSIP/k100200-100")


async def test_the_feed_says_when_the_router_switched(two_nodes: Platform, inbox: Inbox) -> None:
    scene = two_nodes
    await assign_to_b(scene, inbox)
    await scene.routed(TARGET)
    feed = await scene.api.ok("GET", "/v1/events?after=0&limit=500")
    routed = [e for e in feed["events"] if e["type"] == "router.routed"]
    assert any(
        e["data"]["customer"] == TARGET and BLOCK in e["data"]["blocks"]
        and e["data"]["node"] == "node-b" for e in routed
    ), routed  # fmt: skip


async def test_a_transfer_inside_the_pbx_after_a_call_through_the_router(
    two_nodes: Platform,
) -> None:
    """The carrier's call reaches B's phone 100 on node-b through the router; 100
    transfers it (REFER) to B's phone 101, which gets the carrier's call: the REFER and
    the new leg stay on node-b, the carrier's leg on its dialog through the router."""
    scene = two_nodes
    made = await scene.api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/101",
                              {"name": "Ben Berlin", "site_block": "ber-main"})  # fmt: skip
    ben = Phone(made["sip_username"], made["sip_password"], free_port())
    await scene.routed(TARGET)
    node = scene.labs["node-b"]
    scene.register("B", "node-b")
    registered = run_scenario(
        "register", remote_port=node.sip_port, service=ben.username, username=ben.username,
        password=ben.password, local_port=ben.port, variables={"expires": "300"},
    )  # fmt: skip
    assert registered.ok, registered.evidence()
    anna = scene.phones["B"]
    referring = start_scenario(
        "uas_refer", remote_port=node.sip_port, service=anna.username,
        local_port=anna.port, variables={"refer_to": "101"}, timeout=20,
    )  # fmt: skip
    answering = start_scenario("uas_answer", remote_port=node.sip_port, local_port=ben.port,
                               timeout=20)  # fmt: skip
    call = await asyncio.to_thread(scene.carrier_calls, BERLIN, CARRIER_HOST, 20)
    referred = await asyncio.to_thread(referring.wait, 20)
    answered = await asyncio.to_thread(answering.wait, 20)
    assert_blind_transfer(call, referred, answered)


async def test_the_routers_role_reads_its_view_and_nothing_else(db_url: str) -> None:
    url = await reader_url(db_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT * FROM router_numbers")
        # The nodes it probes (dispatcher), and the version row Kamailio checks them by.
        await conn.execute("SELECT * FROM router_dispatcher")
        await conn.execute("SELECT * FROM version WHERE table_name = 'router_dispatcher'")
        for table in ("router_blocks", "router_nodes", "node_health", "blocks", "accounts",
                      "apply_state"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(f"SELECT 1 FROM {table}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("DELETE FROM router_blocks")


def test_the_lab_starts_two_nodes_and_the_router_and_stops_them_all(
    second_lab: Lab, db_url: str, tmp_path: Path
) -> None:
    """`lab up --nodes 2 --router --pjsip-db 2=URL` (node 2 a realtime node with its own
    reader role) and `lab down --nodes 2`: every process gone after."""
    del second_lab  # started after the session's lab: the root filesystem is built
    url = asyncio.run(reader_url(db_url))
    node2 = asyncio.run(pjsip_reader_url(db_url, "node-2"))
    folder = tmp_path / "platform"
    # Node 2 takes the base ports plus one: two ports in a row for AMI, two for SIP.
    ports = [str(free_ports_in_a_row(2)), str(free_ports_in_a_row(2))]
    ports += [str(free_port()) for _ in range(3)]
    up = subprocess.run(
        [str(LAB), "--dir", str(folder), "up", "--nodes", "2", "--router",
         "--ami-port", ports[0], "--sip-port", ports[1], "--router-port", ports[2],
         "--rpc-port", ports[3], "--phone-port", ports[4], "--db-url", url,
         "--pjsip-db", f"2={node2}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        states = [json.loads((folder / f"node-{i}" / "lab.json").read_text()) for i in (1, 2)]
        router = json.loads((folder / "router" / "router.json").read_text())
        assert states[1]["sip_port"] == states[0]["sip_port"] + 1
        assert [s["pjsip"] for s in states] == ["files", "realtime"]
        status = subprocess.run(
            [str(LAB), "--dir", str(folder / "node-2"), "cli", "realtime show pgsql status"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "Connected to" in status.stdout, status.stdout + status.stderr
        pids = [s["pid"] for s in states] + [router["pid"]]
        assert all(alive(pid) for pid in pids)
        answer = rpc(RouterLab(folder, int(ports[2]), int(ports[3]), url), "core.version")
        assert "kamailio" in json.dumps(answer).lower()
    finally:
        down = subprocess.run(
            [str(LAB), "--dir", str(folder), "down", "--nodes", "2"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(alive(pid) for pid in pids)


async def pjsip_reader_url(db_url: str, node: str) -> str:
    """A login for a realtime node's Asterisk: its own reader role in this database."""
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await pjsip_rows.make_reader(conn, "prov_test_node_reader", "node-reader-pw", node)
        await conn.commit()
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info.update(user="prov_test_node_reader", password="node-reader-pw")
    return psycopg.conninfo.make_conninfo("", **info)


async def test_a_block_nobody_uses_leaves_the_router_then_its_node(two_nodes: Platform) -> None:
    """A switches its block back to standard mode: no PBX uses it, so its numbers go from
    the router first (a call gets 404 there), then from node default."""
    scene = two_nodes
    await scene.api.ok("POST", f"/v1/blocks/{BLOCK}/mode", {"mode": "standard"})
    await wait_until(lambda: routed_uri(scene.router, MUNICH) is None,
                     "the router still routes the block", 20, 0.05)  # fmt: skip
    await wait_applied(scene.api, OWNER)
    default = scene.labs["default"]
    await wait_until(
        lambda: "k200300-in-muc-main" not in default.cli(f"dialplan show {MUNICH}@carrier-in"),
        "node default still routes the block",
        20,
        0.1,
    )
    call = await asyncio.to_thread(scene.carrier_calls, MUNICH)
    assert final_status(call) == 404, call.evidence()
    assert (await scene.api.ok("GET", "/v1/nodes/default/check"))["ok"]


async def router_sends(scene: Platform, number: str, node: str, within: float = 20) -> None:
    """Until the router's entry for the number is the node's address (read over RPC)."""
    await wait_for(lambda: asyncio.to_thread(routed_uri, scene.router, number),
                   lambda uri: uri == node_uri(scene, node), f"{number} not sent to {node}",
                   within)  # fmt: skip


async def test_no_call_is_misrouted_while_a_block_moves_and_resets(
    two_nodes_each: Platform, inbox: Inbox
) -> None:
    """The carrier calls A's block at 50 calls/s for at least 20 s while the block is
    assigned to B's PBX on the other node and reset, again and again: a call in a switch
    may ring either side's phone, but every call rings a phone (no 404, no hang-up by a
    node that dropped the numbers before the router stopped sending them)."""
    scene = two_nodes_each
    rings = {}
    for who, node in (("A", "default"), ("B", "node-b")):
        scene.register(who, node)
        rings[who] = RingingPhone(scene.phones[who].port)
        await rings[who].start()
    storm = Prober(CARRIER_HOST, free_port(), scene.router.sip_port, asterisk_host=ROUTER_IP)
    numbers = [f"+4989123456{i}" for i in range(100)]
    switches: list[str] = []
    try:
        async with storm.calling(numbers, rate=50, at_least=20) as finish:
            began = time.time()
            # At least five cycles, and as many as fit in the storm's 20 s: every switch
            # is a window for a misroute. Each step goes on as soon as the router has
            # switched.
            while len(switches) < 10 or time.time() - began < 19:
                await assign_to_b(scene, inbox)
                await router_sends(scene, MUNICH, "node-b")
                switches.append(f"on B at {time.time() - began:.2f} s")
                deleted = await scene.api.call("DELETE", f"/v1/blocks/{BLOCK}/assignment")
                assert deleted.status == 200
                await router_sends(scene, MUNICH, "default")
                switches.append(f"on A at {time.time() - began:.2f} s")
            await finish()
    finally:
        for phone in rings.values():
            phone.close()
    calls = storm.sent
    misrouted = storm.misrouted()
    summary = (
        f"{len(calls)} calls; A's phone rang {rings['A'].invites}, B's {rings['B'].invites};"
        f" {len(switches)} switches: {switches[:20]}"
    )
    assert len(calls) >= 1000 and len(switches) >= 10, summary
    assert not misrouted, f"{summary}; misrouted: " + ", ".join(
        f"{number} {answer} at {sent - began:.2f} s" for number, answer, sent in misrouted[:20]
    )
    assert not storm.unanswered(), f"{summary}; {len(storm.unanswered())} got no answer"
    assert rings["A"].invites > 0 and rings["B"].invites > 0, summary


@pytest.mark.lab  # the lab's Kamailio, with no Asterisk fixture
async def test_a_router_whose_main_is_killed_leaves_no_process_and_status_says_so(
    db_url: str, tmp_path: Path
) -> None:
    async with running_router(tmp_path, db_url) as router:
        children = router.processes()
        assert len(children) > 1, children  # the main and the children it forked
        status = router.command("status")
        assert "router: running" in status.stdout, status.stdout + status.stderr
        assert f"router_pid={router.state()['pid']}" in status.stdout
        router.kill()  # kill -9 of the main alone; returns once no Kamailio is left
        assert not any(alive(pid) for pid in children)
        status = router.command("status")
        assert status.returncode == 3 and "router: not running" in status.stdout, status.stdout
        # Started again on the same ports: the old ones are free, the new one answers.
        router.up()
        assert "kamailio" in json.dumps(rpc(router, "core.version")).lower()


@pytest.mark.lab  # the lab's Kamailio, with no Asterisk fixture
async def test_router_up_on_a_taken_port_fails_and_says_why(db_url: str, tmp_path: Path) -> None:
    router = RouterLab(tmp_path / "taken", free_port(), free_port(), await reader_url(db_url))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((ROUTER_IP, router.sip_port))
        done = router.command(
            "router-up", "--router-ip", ROUTER_IP, "--router-port", str(router.sip_port),
            "--rpc-port", str(router.rpc_port), "--phone-port", str(free_port()),
            "--db-url", router.db_url,
        )  # fmt: skip
    assert done.returncode != 0, done.stdout + done.stderr
    assert f"port {router.sip_port} on {ROUTER_IP} is taken" in done.stderr, done.stderr
    assert not router.processes()


async def test_a_node_switched_to_realtime_takes_the_routers_calls_at_once(
    settings: Settings, clean_lab: Lab, realtime_lab: Lab, tmp_path: Path
) -> None:
    """node-b restarts as a realtime node without any row of its own in the database
    (as a node switched from files, whose files are all in place): at the service's
    start its own rows (the carrier's endpoint) are written, so the router's calls are
    taken at once; nobody runs a repair."""
    url = settings.database.url.value
    await realtime_node(realtime_lab, url, "node-b")
    async with running_router(tmp_path, url) as router:
        async with platform_behind(settings, router, clean_lab, realtime_lab) as scene:
            phones, routed_settings = scene.phones, scene.settings
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("DELETE FROM pjsip_objects WHERE node = 'node-b'")
        for kind in ("endpoint", "aor", "auth"):  # as if it never had them
            realtime_lab.cli(f"sorcery memory cache expire res_pjsip/{kind}")
        nodes = routed_settings.asterisk.nodes
        async with lab_service(routed_settings, clean_lab, nodes=nodes) as (api, _):
            labs = {"default": clean_lab, "node-b": realtime_lab}
            again = Platform(api, routed_settings, router, labs, phones)
            await wait_applied(api, TARGET)
            await again.call_rings(BERLIN, "B", "node-b")


async def test_a_block_of_ten_thousand_numbers_holds_up_no_other_block(
    two_nodes: Platform, inbox: Inbox
) -> None:
    """A's new block of 10,000 numbers goes to the router while A's Munich block is
    assigned to B: both are live at the router within a second or two of their change
    (the big one is one router key), and calls ring on each."""
    scene = two_nodes
    started = time.monotonic()
    await scene.api.ok("PUT", f"/v1/accounts/{OWNER}/blocks/muc-big",
                       {"number": "+49891000", "range": "0000-9999", "mode": "pbx",
                        "default_target": "100"})  # fmt: skip
    await assign_to_b(scene, inbox)
    assigned = time.monotonic()
    await router_sends(scene, MUNICH, "node-b")
    small = time.monotonic() - assigned
    for number in ("+498910000000", "+498910009999"):
        await router_sends(scene, number, "default", within=60)
    big = time.monotonic() - started
    print(f"10,000-number block live at the router {big:.2f} s after its PUT;"
          f" the small block {small:.3f} s after its assignment")  # fmt: skip
    # Its apply on node default (patterns, not numbers) and one router key.
    assert small < 2 and big < 2, (small, big)
    await scene.call_rings(MUNICH, "B", "node-b")
    await scene.call_rings("+498910004242", "A", "default")
