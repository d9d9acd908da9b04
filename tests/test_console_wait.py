"""`provisioner apply` while another instance's round holds the node: the console waits
for that round (up to `--wait`) and then says what it left, not the state from before;
a job that waits for its retry time is not waited for. Real PostgreSQL; the "other
instance" is a second connection holding the node's lock, and the test goes on only
after the console has found the node held twice, so no timing decides the outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fixtures_service import Api, FakeClock
from helpers import TARGET
from ports import free_port
from psycopg_pool import AsyncConnectionPool

from provisioner.app import create_app
from provisioner.apply.round import Applier
from provisioner.db import accounts, apply_queue
from provisioner.db.pool import open_pool
from provisioner.service import console
from provisioner.settings import Node, Secret, Settings


@pytest.fixture
async def scene(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[tuple[Settings, Node, AsyncConnectionPool]]:
    """B's PBX with its apply job queued, on a node whose AMI nobody answers."""
    node = Node(
        name="default", ami_port=free_port(), ami_username="nobody", ami_secret=Secret("x"),
        output_dir=tmp_path / "node", carrier_host="127.0.0.2", pjsip="files",
    )  # fmt: skip
    node.output_dir.mkdir()
    settings = replace(settings, asterisk=replace(settings.asterisk, nodes=(node,)))
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, clock=clock, run_workers=False), host="127.0.0.1")
    )
    await client.start_server()
    try:
        api = Api(client)
        await api.ok("PUT", f"/v1/accounts/{TARGET}",
                     {"name": "Spree Logistik GmbH", "email": "it@spree.example",
                      "language": "de"})  # fmt: skip
        await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx")
    finally:
        await client.close()
    pool = await open_pool(settings.database.url.value)
    try:
        async with pool.connection() as conn, conn.transaction():
            pbx = await accounts.get_pbx(conn, TARGET)
            assert pbx is not None
            await apply_queue.request(conn, pbx.id, "provisioner apply", clock())
        yield settings, node, pool
    finally:
        await pool.close()


def hold_node(db_url: str) -> psycopg.Connection[Any]:
    """Another instance's round: the node's apply lock held until the connection ends."""
    other = psycopg.connect(db_url)
    other.execute("INSERT INTO service_locks VALUES ('apply:default') ON CONFLICT DO NOTHING")
    other.commit()
    other.execute("SELECT 1 FROM service_locks WHERE name = 'apply:default' FOR UPDATE")
    return other


def count_rounds(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], asyncio.Event]:
    """What each of the console's rounds took (0: the node was held, or nothing due),
    and an event set once it has tried twice."""
    taken: list[int] = []
    twice = asyncio.Event()
    original = Applier.round

    async def counted(self: Applier, **kwargs: Any) -> int:
        result = await original(self, **kwargs)
        taken.append(result)
        if len(taken) >= 2:
            twice.set()
        return result

    monkeypatch.setattr(Applier, "round", counted)
    return taken, twice


async def test_the_console_waits_for_the_other_round_and_reports_its_outcome(
    scene: tuple[Settings, Node, AsyncConnectionPool],
    db_url: str,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, node, pool = scene
    db.execute("UPDATE apply_queue SET next_attempt_at = now()")  # due now
    async with pool.connection() as conn:
        pbx = await accounts.get_pbx(conn, TARGET)
    assert pbx is not None
    taken, twice = count_rounds(monkeypatch)
    other = hold_node(db_url)
    try:
        waiting = asyncio.create_task(
            console.apply_now(pool, settings, node, pbx, full=False, wait_seconds=60)
        )
        async with asyncio.timeout(30):
            await twice.wait()  # found the node held, waited, found it held again
        assert set(taken) == {0}, taken
        assert not waiting.done(), "the console must wait for the other instance's round"
        # The other round ends: its job done, its outcome recorded, its lock let go.
        other.execute("DELETE FROM apply_queue WHERE pbx_id = %s", (pbx.id,))
        other.execute(
            "INSERT INTO apply_state (pbx_id, state, revision, good_revision, updated_at)"
            " VALUES (%s, 'applied', 7, 7, now()) ON CONFLICT (pbx_id) DO UPDATE"
            " SET state = 'applied', revision = 7, good_revision = 7, error = NULL",
            (pbx.id,),
        )
        other.commit()
    finally:
        other.close()
    async with asyncio.timeout(30):
        said = await waiting
    assert said == "applied (revision 7)", said


async def test_a_job_waiting_for_its_retry_is_not_waited_for(
    scene: tuple[Settings, Node, AsyncConnectionPool],
    db_url: str,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, node, pool = scene
    db.execute(
        "UPDATE apply_queue SET next_attempt_at = now() + interval '1 hour',"
        " last_error = 'AMI refused the login'"
    )
    async with pool.connection() as conn:
        pbx = await accounts.get_pbx(conn, TARGET)
    assert pbx is not None
    taken, _ = count_rounds(monkeypatch)
    other = hold_node(db_url)
    try:
        async with asyncio.timeout(30):
            said = await console.apply_now(pool, settings, node, pbx, full=False,
                                           wait_seconds=60)  # fmt: skip
    finally:
        other.close()
    assert taken == [0], "one look, no waiting"
    assert said == "not applied yet, the change stays queued: AMI refused the login", said
