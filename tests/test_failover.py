"""Failover's own rules against a real PostgreSQL, without Asterisk or Kamailio (the
whole path with real nodes and router is test_node_health.py): a node down for less than
asterisk.failover_seconds keeps its PBXs, a standby that is not known to be up takes
nothing, a PBX still moving from an earlier move stays, and two instances failing the
same node over at once move each PBX once, with one node.failover event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fixtures_service import Api
from helpers import OWNER, OWNER_MAIL, TARGET, TARGET_MAIL
from ports import free_port
from psycopg_pool import AsyncConnectionPool

from provisioner.app import create_app
from provisioner.apply import record
from provisioner.db import accounts as db_accounts
from provisioner.db import apply_state, revisions, rounds
from provisioner.db import router as db_router
from provisioner.render.render import digest
from provisioner.service.failover import fail_over
from provisioner.settings import Node, Router, Secret, Settings

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
THIRD = "K300400"


def nowhere(name: str, folder: Path, standby: str = "") -> Node:
    """A node whose Asterisk never answers: nothing of a PBX is ever live on it."""
    return Node(
        name=name, ami_port=free_port(), ami_username="x", ami_secret=Secret("x"),
        output_dir=folder / name, carrier_host="127.0.0.2", standby=standby,
    )  # fmt: skip


@pytest.fixture
def three_nodes(settings: Settings, tmp_path: Path) -> Settings:
    """`default` with node-b as its standby, node-b, node-c; a router that never
    answers, and no node-health loop: the test stores the marks and runs each failover
    pass itself, on its own clock."""
    nodes = (
        nowhere("default", tmp_path, standby="node-b"),
        nowhere("node-b", tmp_path),
        nowhere("node-c", tmp_path),
    )
    return replace(
        settings,
        asterisk=replace(settings.asterisk, nodes=nodes, retry_seconds=600, failover_seconds=10),
        router=Router(rpc_url=f"http://127.0.0.1:{free_port()}/RPC", health_ms=0),
    )


@pytest.fixture
async def api(three_nodes: Settings) -> AsyncIterator[Api]:
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(three_nodes), port=three_nodes.listen.port)
    )
    await client.start_server()
    try:
        yield Api(client)
    finally:
        await client.close()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with AsyncConnectionPool(db_url, min_size=1, max_size=4, open=False) as opened:
        yield opened


async def homes(db_url: str) -> dict[str, tuple[str, str | None]]:
    async with await psycopg.AsyncConnection.connect(db_url) as db:
        cur = await db.execute("SELECT customer, node, leaving_node FROM pbxes")
        return {row[0]: (row[1], row[2]) for row in await cur.fetchall()}


async def failovers(db_url: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(db_url) as db:
        cur = await db.execute("SELECT data FROM events WHERE type = 'node.failover'")
        return [row[0] for row in await cur.fetchall()]


async def mark(db_url: str, marks: dict[str, bool], at: datetime) -> None:
    async with await psycopg.AsyncConnection.connect(db_url) as db:
        await db_router.record_health(db, marks, at)
        await db.commit()


async def three_pbxes(api: Api) -> None:
    """A and B homed on `default`; the third moving from node-c to `default` (its move
    never finishes: nothing is ever live anywhere here)."""
    for customer, mail, node in (
        (OWNER, OWNER_MAIL, "default"),
        (TARGET, TARGET_MAIL, "default"),
        (THIRD, "it@rhein.example", "node-c"),
    ):
        await api.ok("PUT", f"/v1/accounts/{customer}",
                     {"name": customer, "email": mail, "language": "en"})  # fmt: skip
        await api.ok("PUT", f"/v1/accounts/{customer}/pbx", {"node": node})
    await api.ok("PUT", f"/v1/accounts/{THIRD}/pbx", {"node": "default"})


async def test_failover_waits_its_time_needs_a_standby_that_is_up_and_leaves_a_moving_pbx(
    api: Api, three_nodes: Settings, pool: AsyncConnectionPool, db_url: str
) -> None:
    await three_pbxes(api)
    assert (await homes(db_url))[THIRD] == ("default", "node-c")

    # default down, and its standby too: nothing moves, however long.
    await mark(db_url, {"default": False, "node-b": False}, T0)
    assert await fail_over(pool, three_nodes, lambda: T0 + timedelta(hours=1)) == 0

    # The standby up again, default down for less than failover_seconds: nothing yet.
    await mark(db_url, {"node-b": True}, T0 + timedelta(seconds=1))
    assert await fail_over(pool, three_nodes, lambda: T0 + timedelta(seconds=9)) == 0
    assert await failovers(db_url) == []

    # Down for longer: A and B move to node-b; the moving PBX stays where it is.
    assert await fail_over(pool, three_nodes, lambda: T0 + timedelta(seconds=11)) == 2
    assert await homes(db_url) == {
        OWNER: ("node-b", "default"),
        TARGET: ("node-b", "default"),
        THIRD: ("default", "node-c"),
    }
    [event] = await failovers(db_url)
    assert (event["node"], event["standby"]) == ("default", "node-b"), event
    assert sorted(event["customers"]) == sorted([OWNER, TARGET]), event
    assert event["down_since"] == T0.isoformat(), event

    # The next passes move nothing more, and say nothing more.
    assert await fail_over(pool, three_nodes, lambda: T0 + timedelta(seconds=12)) == 0
    assert len(await failovers(db_url)) == 1


async def test_two_instances_failing_a_node_over_at_once_move_each_pbx_once(
    api: Api, three_nodes: Settings, db_url: str
) -> None:
    await three_pbxes(api)
    await mark(db_url, {"default": False, "node-b": True}, T0)
    later = T0 + timedelta(seconds=30)
    async with (
        AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False) as one,
        AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False) as other,
    ):
        moved = await asyncio.gather(
            fail_over(one, three_nodes, lambda: later),
            fail_over(other, three_nodes, lambda: later),
        )
    assert sorted(moved) == [0, 2], moved
    assert len(await failovers(db_url)) == 1
    assert (await homes(db_url))[OWNER] == ("node-b", "default")


async def test_the_node_check_names_a_node_the_router_marks_down(api: Api, db_url: str) -> None:
    """Its Asterisk does not answer (these nodes never do): the 503 says what the router
    knows, the time it marked the node down; a node marked up gets the plain 503."""
    await mark(db_url, {"default": False, "node-b": True}, T0)
    down = await api.call("GET", "/v1/nodes/default/check")
    body = await down.json()
    assert down.status == 503, body
    assert f"router: node marked down since {T0.isoformat()}" in body["detail"], body
    up = await api.call("GET", "/v1/nodes/node-b/check")
    body = await up.json()
    assert up.status == 503 and "marked down" not in body["detail"], body


@pytest.mark.parametrize("pjsip_due", [False, True], ids=["applied", "pjsip-waits"])
async def test_a_pbx_that_renders_the_same_on_its_new_node_is_live_there(
    pool: AsyncConnectionPool, pjsip_due: bool
) -> None:
    """Every node with the same carrier (as in production): a PBX moved (or failed over)
    renders the same files on its new node. Once they are on disk there, its apply state
    names its latest revision as live, or the router would never switch to the node.
    Found by `make bench --part failover`: the PBXs were "applied" with nothing live."""
    files = {"dialplan/tenant-k200300.conf": "; the same on every node\n"}
    async with pool.connection() as conn:
        await db_accounts.upsert(conn, OWNER, "Isar", OWNER_MAIL, "en", T0)
        pbx, _ = await db_accounts.create_pbx(conn, OWNER, "k200300", "default", T0)
        assert pbx is not None
        latest = await revisions.add_revision(conn, pbx.id, digest(files), files, T0)
        await apply_state.set_state(conn, pbx.id, "applied", T0, revision=latest.revision,
                                    good_revision=latest.revision)  # fmt: skip
        await db_router.set_pbx_state(conn, {pbx.id}, "routed", None, T0)
        await db_accounts.move_pbx(conn, pbx.id, "node-b")
        await conn.commit()
        moved = await apply_state.get(conn, pbx.id)
        # The router sends it to its old node until its entries switch: not "routed".
        assert moved is not None and moved.router == "pending", moved
        [tenant] = await rounds.round_pbxes(conn, [pbx.id])
    assert (tenant.latest, tenant.written, tenant.pjsip_live) == (latest.revision, files, False)
    outcome = record.Outcome(tenant, on_disk=dict(files), pjsip_due=pjsip_due)
    await record.record(pool, [outcome], T0, 1)
    async with pool.connection() as conn:
        state = await apply_state.get(conn, pbx.id)
        assert await revisions.latest_revision(conn, pbx.id) == latest  # no new revision
    assert state is not None
    assert state.dialplan_revision == latest.revision, state
    if pjsip_due:  # its PJSIP objects come with the node's next reload (pjsip_live)
        assert (state.state, state.pjsip_revision) == ("pending", None), state
    else:
        assert (state.state, state.pjsip_revision) == ("applied", latest.revision), state
        assert state.good_revision == latest.revision, state
