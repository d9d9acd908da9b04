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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from fixtures_lab import Lab
from lab_helpers import lab_command, lab_up_again
from router_helpers import Platform, final_status, node_named, platform_of, rpc
from waiting import wait_until

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
