"""Node health through the SIP router: Kamailio probes each node with OPTIONS
(dispatcher), marks a node that stops answering down and refuses its calls at once
(503, not a 408 after the 2 s transaction timeout), and the service tells the portal
(node.down, node.up, once each) and /metrics. Real Kamailio, the lab's two Asterisks,
sipp as the carrier and the phones; the node is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from fixtures_lab import Lab
from helpers import OWNER
from lab_helpers import CARRIER_HOST, lab_command, lab_up_again
from ports import free_port
from router_helpers import (
    ROUTER_IP,
    Platform,
    final_status,
    node_named,
    platform_of,
    routed_uri,
    rpc,
)
from waiting import wait_until

from bench.sip import Prober, RingingPhone
from provisioner.db import router as db_router
from provisioner.settings import Settings

MUNICH = "+49891234567"  # A's block on node `default`
BERLIN = "+49301234560"  # B's block on node `node-b`


async def node_up(scene: Platform, node: str) -> float | None:
    """The gauge provisioner_node_up of the node (None: not set yet)."""
    response = await scene.api.client.get("/metrics")
    for line in (await response.text()).splitlines():
        if line.startswith(f'provisioner_node_up{{node="{node}"}}'):
            return float(line.split()[-1])
    return None


async def node_events(scene: Platform) -> list[dict[str, Any]]:
    feed = await scene.api.ok("GET", "/v1/events?after=0&limit=500")
    return [e for e in feed["events"] if e["type"].startswith("node.")]


async def test_a_killed_node_is_marked_down_its_calls_refused_at_once_and_up_again(
    settings: Settings, clean_lab: Lab, clean_second_lab: Lab, tmp_path: Path
) -> None:
    async with platform_of(settings, clean_lab, clean_second_lab, tmp_path) as scene:
        await wait_until(lambda: node_up(scene, "node-b"), "node-b never probed up", 15)
        assert await node_up(scene, "default") == 1.0
        assert await node_events(scene) == [], "a platform that starts announces no node up"
        await scene.call_rings(BERLIN, "B", "node-b")

        pid = int(json.loads((clean_second_lab.folder / "lab.json").read_text())["pid"])
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        async def down() -> list[dict[str, Any]] | None:
            return [e for e in await node_events(scene) if e["type"] == "node.down"] or None

        def seen() -> str:
            listed = json.dumps(rpc(scene.router, "dispatcher.list"))
            return (
                f"no node.down within 15 s of the kill; the router: {listed}\n"
                + (scene.router.log()[-3000:])
            )

        events = await wait_until(down, seen, 15)
        marked_in = time.monotonic() - killed
        assert [e["data"]["node"] for e in events] == ["node-b"], events
        assert events[0]["data"]["up"] is False
        assert events[0]["data"]["sip_uri"] == node_named(scene.settings, "node-b").sip_uri
        assert await node_up(scene, "node-b") == 0.0

        # B's numbers: refused by the router at once, not after its 2 s timeout.
        started = time.monotonic()
        refused = await asyncio.to_thread(scene.carrier_calls, BERLIN)
        refused_in = time.monotonic() - started
        assert final_status(refused) == 503, refused.evidence()
        assert refused_in < 1.5, f"{refused_in:.2f} s"
        # A's node is not touched by it.
        await scene.call_rings(MUNICH, "A", "default")
        assert await node_up(scene, "default") == 1.0

        await lab_up_again(clean_second_lab)
        restarted = time.monotonic()

        async def up() -> list[dict[str, Any]] | None:
            return [e for e in await node_events(scene) if e["type"] == "node.up"] or None

        await wait_until(up, "no node.up within 20 s of the restart", 20)
        back_in = time.monotonic() - restarted
        await scene.call_rings(BERLIN, "B", "node-b")
        types = [e["type"] for e in await node_events(scene)]
        assert types == ["node.down", "node.up"], types
        print(f"node-b marked down {marked_in:.1f} s after SIGKILL, refused in"
              f" {refused_in * 1000:.0f} ms, up {back_in:.1f} s after its restart")  # fmt: skip
    assert lab_command(clean_second_lab, "status").returncode == 0


async def test_the_routers_marks_are_stored_once_per_change(db_url: str) -> None:
    """node.down and node.up once per change, whichever instance stores the mark first;
    a node first seen up is no change."""
    now = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        assert await db_router.record_health(conn, {"a": True, "b": True}, now) == []
        later = now + timedelta(seconds=3)
        changed = await db_router.record_health(conn, {"a": True, "b": False}, later)
        assert [(h.node, h.up, h.since) for h in changed] == [("b", False, later)]
        # Another instance with the same view: nothing more.
        assert await db_router.record_health(conn, {"a": True, "b": False}, later) == []
        assert [h.node for h in await db_router.record_health(conn, {"b": True}, later)] == ["b"]
        # A node first seen down is a change (the portal must hear of it).
        first = await db_router.record_health(conn, {"c": False}, later)
        assert [(h.node, h.up) for h in first] == [("c", False)]
        stored = await db_router.health(conn)
        assert {n: h.up for n, h in stored.items()} == {"a": True, "b": True, "c": False}


async def test_a_dead_nodes_pbxs_ring_on_its_standby_and_stay_there(
    settings: Settings, clean_lab: Lab, clean_second_lab: Lab, tmp_path: Path
) -> None:
    """Node `default` (A's PBX) has node-b as its standby. A's phone registers through
    the router (its PBX's domain); the carrier calls A's numbers at 20 calls/s;
    `default` is killed. Its PBXs move to node-b once the router has found it down for
    failover_seconds; the phone's next REGISTER, the same configuration, lands there
    (it tries again each second until one succeeds, as a phone does after a failed
    refresh), and from the first call that rings there on, every call rings. The node
    comes back: nothing moves back by itself; the operator moves A back, and A's calls
    ring on `default` again."""
    quick = replace(settings, asterisk=replace(settings.asterisk, failover_seconds=1))
    async with platform_of(quick, clean_lab, clean_second_lab, tmp_path, "node-b") as scene:
        await wait_until(lambda: node_up(scene, "default"), "default never probed up", 15)
        phone = scene.phones["A"]
        registered = scene.register_via_router(OWNER, phone)
        assert registered.ok, registered.evidence()
        ringing = RingingPhone(phone.port)
        await ringing.start()
        storm = Prober(CARRIER_HOST, free_port(), scene.router.sip_port, asterisk_host=ROUTER_IP)
        numbers = [f"+4989123456{i}" for i in range(100)]
        try:
            async with storm.calling(numbers, rate=20, at_least=10) as finish:
                await wait_until(lambda: ringing.invites >= 20, "A's phone does not ring", 10)
                pid = int(json.loads((clean_lab.folder / "lab.json").read_text())["pid"])
                killed = time.time()
                os.kill(pid, signal.SIGKILL)

                async def failed_over() -> list[dict[str, Any]] | None:
                    found = [e for e in await node_events(scene) if e["type"] == "node.failover"]
                    return found or None

                moved = await wait_until(failed_over, "no node.failover within 30 s", 30)
                failover_at = time.time()
                down = next(e for e in await node_events(scene) if e["type"] == "node.down")
                down_at = datetime.fromisoformat(down["data"]["since"]).timestamp()
                assert moved[0]["data"]["node"] == "default", moved
                assert moved[0]["data"]["standby"] == "node-b", moved
                assert OWNER in moved[0]["data"]["customers"], moved
                # The phone registers again through the router, unchanged: once the router
                # sends its PBX's domain to node-b, the REGISTER lands there.
                ringing.close()
                rang_before = ringing.invites

                async def registers() -> bool:
                    return (await asyncio.to_thread(scene.register_via_router, OWNER, phone)).ok

                await wait_until(registers, "the phone never registered again", 30, interval=1)
                registered_at = time.time()
                assert phone.username in clean_second_lab.cli("pjsip show contacts")
                ringing = RingingPhone(phone.port, invites=rang_before)
                await ringing.start()
                await wait_until(
                    lambda: ringing.invites > rang_before, "no call rings on node-b", 30
                )
                first_ring = min(t for c, t in storm.rang.items() if storm.sent[c] > killed)
                # Go on calling for 5 s after the first ring on the standby.
                await wait_until(lambda: time.time() - first_ring > 5, "(not reached)", 10)
                await finish()
        finally:
            ringing.close()
        after = [c for c, sent in storm.sent.items() if sent >= first_ring]
        lost = [c for c in after if c not in storm.rang]
        summary = (
            f"{len(storm.sent)} calls, {len(after)} after the first ring on node-b;"
            f" node.down {down_at - killed:.1f} s, node.failover {failover_at - killed:.1f} s,"
            f" the phone registered through the router {registered_at - killed:.1f} s,"
            " first ring on node-b"
            f" {first_ring - killed:.1f} s after the kill"
        )
        print(summary)
        assert not lost, f"{summary}; {len(lost)} lost: " + ", ".join(
            f"{storm.final.get(c)} {storm.answered_by.get(c, '')}" for c in lost[:10]
        )
        assert len(after) >= 80, summary
        assert first_ring - killed <= 30, summary

        # The node comes back: marked up, and A's PBX stays on node-b; what `default`
        # had of it is removed there (nothing routes to it any more).
        await lab_up_again(clean_lab)

        async def up() -> list[dict[str, Any]] | None:
            return [e for e in await node_events(scene) if e["type"] == "node.up"] or None

        await wait_until(up, "default never marked up again", 20)
        left = clean_lab.output_dir / "dialplan/tenant-k200300.conf"
        await wait_until(lambda: not left.exists(), "A's files stay on default", 20)
        pbx = await scene.api.ok("GET", f"/v1/accounts/{OWNER}/pbx")
        assert pbx["node"] == "node-b", pbx
        types = [e["type"] for e in await node_events(scene)]
        assert types == ["node.down", "node.failover", "node.up"], types

        # The operator moves it back, once its departure from default is recorded.
        async def moved_back() -> bool:
            put = await scene.api.call("PUT", f"/v1/accounts/{OWNER}/pbx", {"node": "default"})
            return put.status == 200

        await wait_until(moved_back, "A's PBX cannot be moved back", 20)
        home = node_named(scene.settings, "default").sip_uri
        # Applied there, and the router sends A's numbers and phones there (its state
        # is pending from the move until both switched), ...
        await scene.routed(OWNER, 30)
        assert routed_uri(scene.router, MUNICH) == home
        # ... so the phone's next REGISTER, still the same, lands on `default` again.
        await wait_until(registers, "the phone never registered on default again", 30)
        assert phone.username in clean_lab.cli("pjsip show contacts")
        await scene.rings(MUNICH, phone, ROUTER_IP, scene.router.phone_port)
