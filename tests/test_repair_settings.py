"""One applier per node, made from the settings (`Applier.of`): the drift repair, the
console and the worker all get theirs there. A repair once made its own with defaults
and the system clock, so `asterisk.retry_seconds` and the injected clock were ignored
when it failed. Real PostgreSQL; the node's AMI port is closed (nothing listens), so the
repair's round fails at Asterisk and schedules its retry."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from aiohttp.test_utils import TestClient, TestServer
from fixtures_service import Api, FakeClock
from helpers import TARGET
from ports import free_port

from provisioner.app import create_app
from provisioner.apply.check import PbxDrift, repair_node
from provisioner.apply.round import Applier
from provisioner.db.pool import open_pool
from provisioner.settings import Node, Secret, Settings


async def test_a_drift_repair_schedules_its_retry_by_the_settings_and_the_clock(
    settings: Settings, clock: FakeClock, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    node = Node(
        name="default", ami_port=free_port(), ami_username="nobody", ami_secret=Secret("x"),
        output_dir=tmp_path / "node", carrier_host="127.0.0.2", pjsip="files",
    )  # fmt: skip
    node.output_dir.mkdir()
    settings = replace(settings, asterisk=replace(settings.asterisk, nodes=(node,),
                                                  retry_seconds=77))  # fmt: skip
    app = create_app(settings, clock=clock, run_workers=False)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        api = Api(client)
        await api.ok("PUT", f"/v1/accounts/{TARGET}",
                     {"name": "Spree Logistik GmbH", "email": "it@spree.example",
                      "language": "de"})  # fmt: skip
        await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx")
        db.execute("DELETE FROM apply_queue")  # as if applied: only the repair queues now
        clock.advance(hours=1)

        pool = await open_pool(settings.database.url.value)
        try:
            drifted = [PbxDrift(TARGET, TARGET.lower(), pending=False, files=["edited"])]
            await repair_node(Applier.of(settings, pool, node, clock), drifted)
        finally:
            await pool.close()
    finally:
        await client.close()

    requested, retry_at, attempts, full, error = (
        db.execute(
            "SELECT requested_at, next_attempt_at, attempts, full_reload, last_error"
            " FROM apply_queue"
        ).fetchone()
        or (None,) * 5
    )
    assert requested == clock.now, "the repair's request is stamped by the injected clock"
    assert attempts == 1 and full, (attempts, full)
    assert retry_at == clock.now + timedelta(seconds=77), "asterisk.retry_seconds, not 5"
    assert "AMI" in (error or "") or "connect" in (error or "").lower(), error
