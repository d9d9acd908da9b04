"""The router's table in PostgreSQL, without Kamailio or Asterisk: which blocks are due
to switch (only once their new PBX is live), and which blocks a PBX keeps serving until
the router has switched them (make before break). The same steps against the real
router and nodes are in test_router.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fixtures_mail import Inbox
from fixtures_service import Api
from helpers import BLOCK, OWNER, OWNER_MAIL, TARGET, TARGET_MAIL, assign_and_confirm
from ports import free_port

from provisioner.app import create_app
from provisioner.db import pbx as db_pbx
from provisioner.db import router as db_router
from provisioner.settings import Node, Router, Secret, Settings


def nowhere(name: str, folder: Path) -> Node:
    """A node whose Asterisk never answers: its applies stay queued, as the test wants."""
    return Node(
        name=name, ami_port=free_port(), ami_username="x", ami_secret=Secret("x"),
        output_dir=folder / name, carrier_host="127.0.0.2",
    )  # fmt: skip


@pytest.fixture
async def api(settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    nodes = (nowhere("default", tmp_path), nowhere("node-b", tmp_path))
    app = create_app(
        replace(
            settings,
            asterisk=replace(settings.asterisk, nodes=nodes, retry_seconds=600),
            router=Router(rpc_url=f"http://127.0.0.1:{free_port()}/RPC"),
        )
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app, port=settings.listen.port))
    await client.start_server()
    try:
        yield Api(client)
    finally:
        await client.close()


async def ids(db: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    cur = await db.execute("SELECT customer, id FROM pbxes")
    return {row[0]: row[1] for row in await cur.fetchall()}


async def as_if_applied(
    db: psycopg.AsyncConnection[Any], pbx_id: int, *, pjsip: bool = False
) -> None:
    """As if the PBX's apply round had made its latest dialplan live (with `pjsip`, its
    endpoints too)."""
    await db.execute("DELETE FROM apply_queue WHERE pbx_id = %s", (pbx_id,))
    await db.execute(
        "INSERT INTO apply_state (pbx_id, state, revision, dialplan_revision, pjsip_revision,"
        " updated_at) VALUES (%s, 'applied', 1, 1, CASE WHEN %s THEN 1 END, now())"
        " ON CONFLICT (pbx_id) DO UPDATE"
        " SET revision = coalesce(apply_state.revision, 0) + 1,"
        "     dialplan_revision = coalesce(apply_state.revision, 0) + 1,"
        "     pjsip_revision = CASE WHEN %s THEN coalesce(apply_state.revision, 0) + 1 END",
        (pbx_id, pjsip, pjsip),
    )


async def switch(db: psycopg.AsyncConnection[Any]) -> list[db_router.Change]:
    """What the router step would switch now, recorded as done; returns the blocks'
    changes (a PBX's own entry, for its phones, is switched alongside: see
    test_a_pbx_entry_follows_its_pbx_once_its_phones_are_live)."""
    async with db.transaction():
        due = await db_router.due(db, 100)
        for change in due:
            await db_router.routed(db, change, _now())
    return [c for c in due if not c.block_id.startswith(db_router.PBX_ENTRY)]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def serves(db: psycopg.AsyncConnection[Any], pbx_id: int) -> list[str]:
    return [u.block.id for u in await db_pbx.used_blocks(db, pbx_id)]


async def test_a_block_switches_only_once_live_and_the_old_pbx_serves_it_until_then(
    api: Api, inbox: Inbox, db_url: str
) -> None:
    for customer, mail, node in ((OWNER, OWNER_MAIL, "default"), (TARGET, TARGET_MAIL, "node-b")):
        await api.ok("PUT", f"/v1/accounts/{customer}",
                     {"name": customer, "email": mail, "language": "en"})  # fmt: skip
        await api.ok("PUT", f"/v1/accounts/{customer}/pbx", {"node": node})
    await api.ok("PUT", f"/v1/accounts/{OWNER}/blocks/{BLOCK}",
                 {"number": "+4989123456", "range": "0-99", "mode": "pbx"})  # fmt: skip
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as db:
        pbx = await ids(db)
        a, b = pbx[OWNER], pbx[TARGET]
        # Not before A's config is live.
        assert await switch(db) == []
        await as_if_applied(db, a)
        [first] = await switch(db)
        assert (first.pbx_id, first.node, first.old_pbx_id) == (a, "default", None)
        # 0-99: the ten 11-digit numbers are one key, the ninety 12-digit ones nine.
        assert first.keys == ("+4989123456/11", *(f"+4989123456{d}/12" for d in range(1, 10)))

        # Assigned to B on node-b: B's config is not live yet, so the router stays with
        # A, and A keeps serving the block (besides B, which gets it already).
        await assign_and_confirm(api, inbox)
        assert await switch(db) == []
        assert await serves(db, a) == [BLOCK]
        assert await serves(db, b) == [BLOCK]
        await as_if_applied(db, b)
        [moved] = await switch(db)
        assert (moved.pbx_id, moved.node, moved.old_pbx_id, moved.old_node) == (
            b, "node-b", a, "default"
        )  # fmt: skip
        assert await serves(db, a) == []  # released: A's next round drops it

        # The reset: back to A once A's config is live again; B serves it until then.
        assert (await api.call("DELETE", f"/v1/blocks/{BLOCK}/assignment")).status == 200
        assert await switch(db) == []
        assert await serves(db, b) == [BLOCK]
        await as_if_applied(db, a)
        [back] = await switch(db)
        assert (back.pbx_id, back.old_pbx_id) == (a, b)
        assert await serves(db, b) == []

        # Nobody uses it any more: its entries go at once; A serves it until they did.
        await api.ok("POST", f"/v1/blocks/{BLOCK}/mode", {"mode": "standard"})
        assert await serves(db, a) == [BLOCK]
        [gone] = await switch(db)
        assert (gone.pbx_id, gone.node, gone.keys) == (None, None, ())
        assert await serves(db, a) == []
        cur = await db.execute("SELECT count(*) FROM router_blocks")
        assert (await cur.fetchone()) == (0,)


async def test_a_same_node_reassignment_is_not_held(api: Api, inbox: Inbox, db_url: str) -> None:
    """Both PBXs on one node: nothing to wait for, and the old PBX must not keep the
    block (two PBXs' [carrier-in] entries for one number on one node would clash)."""
    for customer, mail in ((OWNER, OWNER_MAIL), (TARGET, TARGET_MAIL)):
        await api.ok("PUT", f"/v1/accounts/{customer}",
                     {"name": customer, "email": mail, "language": "en"})  # fmt: skip
        await api.ok("PUT", f"/v1/accounts/{customer}/pbx", {"node": "default"})
    await api.ok("PUT", f"/v1/accounts/{OWNER}/blocks/{BLOCK}",
                 {"number": "+4989123456", "range": "0-99", "mode": "pbx"})  # fmt: skip
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as db:
        pbx = await ids(db)
        await as_if_applied(db, pbx[OWNER])
        await switch(db)
        await assign_and_confirm(api, inbox)
        assert await serves(db, pbx[OWNER]) == []
        assert await serves(db, pbx[TARGET]) == [BLOCK]


async def test_a_pbx_entry_follows_its_pbx_once_its_phones_are_live(api: Api, db_url: str) -> None:
    """The router's entry of a PBX itself (its phones, by its SIP domain) switches as a
    block does, make before break, but only once the PBX's endpoints are live on its
    node, not its dialplan alone; a removed PBX's entry goes."""
    await api.ok("PUT", f"/v1/accounts/{OWNER}",
                 {"name": OWNER, "email": OWNER_MAIL, "language": "en"})  # fmt: skip
    await api.ok("PUT", f"/v1/accounts/{OWNER}/pbx", {"node": "default"})
    entry = f"{db_router.PBX_ENTRY}{OWNER.lower()}"

    async def entries(db: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
        async with db.transaction():
            due = await db_router.due(db, 100)
            for change in due:
                await db_router.routed(db, change, _now())
        return [(c.block_id, c.node, c.keys, c.old_node) for c in due]

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as db:
        a = (await ids(db))[OWNER]
        await as_if_applied(db, a)
        assert await entries(db) == [], "its dialplan alone is live: phones would fail"
        await as_if_applied(db, a, pjsip=True)
        assert await entries(db) == [(entry, "default", (entry,), None)]

        await api.ok("PUT", f"/v1/accounts/{OWNER}/pbx", {"node": "node-b"})
        assert await entries(db) == []
        assert await db_router.routed_to(db, a, "default") == 1  # it stays there for now
        await as_if_applied(db, a, pjsip=True)
        assert await entries(db) == [(entry, "node-b", (entry,), "default")]
        assert await db_router.routed_to(db, a, "default") == 0

        assert (await api.call("DELETE", f"/v1/accounts/{OWNER}/pbx")).status == 204
        assert await entries(db) == [(entry, None, (), "node-b")]
        assert await db_router.table(db) == {}
