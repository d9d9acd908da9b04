"""A database restart delays work and loses nothing: no mail dropped, none sent twice."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pgserver
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fixtures_mail import Inbox, confirm_link
from fixtures_service import Api, FakeClock, make_settings
from helpers import BLOCK, TARGET, path_of, scene
from ports import free_port
from waiting import mail_settled, wait_until

from provisioner.app import create_app
from provisioner.db import embedded
from provisioner.db.pool import DatabaseUnfit


@pytest.mark.slow  # restarts PostgreSQL and waits for it
async def test_database_restart_delays_mail_and_loses_none(
    own_database: tuple[str, Path], inbox: Inbox, clock: FakeClock, tmp_path: Path
) -> None:
    url, folder = own_database
    settings = make_settings(url, smtp_host="127.0.0.1", smtp_port=inbox.port,
                             port=free_port(), data=tmp_path)  # fmt: skip
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, clock=clock), host="127.0.0.1",
                   port=settings.listen.port)
    )  # fmt: skip
    await client.start_server()
    api = Api(client)
    try:
        await scene(api)
        inbox.fail_next = 2  # SMTP refuses both confirm mails: they wait in the outbox
        assignment = await api.ok(
            "POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET}
        )
        # Both refusals are recorded (each mail tried once and waiting for its retry):
        # only then does an empty inbox prove that nothing got through.
        await wait_until(lambda: refused(url) == 2, "both mails refused and recorded")
        assert inbox.messages == []

        # The database goes away: the service says so, and nothing is lost.
        running = pgserver.get_server(folder, cleanup_mode=None)  # type: ignore[attr-defined]
        await asyncio.to_thread(running.cleanup)
        ready = await client.get("/readyz")
        assert ready.status == 503
        down = await api.call("GET", f"/v1/blocks/{BLOCK}/assignment")
        assert down.status == 503 and down.content_type == "application/problem+json"
        assert down.headers["Retry-After"] == "1"
        assert (await down.json(content_type=None))["code"] == "service_unavailable"

        await asyncio.to_thread(embedded.start, folder)
        clock.advance(seconds=30)  # past the mails' backoff
        # The pool reconnects with its own backoff (1 s, 2 s, 4 s, ...): give it time.
        owner_mail = await inbox.wait_for_message(
            f"confirm_request.{assignment['id']}.owner", timeout=90
        )
        target_mail = await inbox.wait_for_message(
            f"confirm_request.{assignment['id']}.target", timeout=10
        )
        for link in (confirm_link(owner_mail), confirm_link(target_mail)):
            assert (await client.post(path_of(link))).status == 200
        state = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
        assert state["state"] == "active"
        await inbox.wait_for(4, timeout=20)
        await mail_settled(url)  # every mail of the outbox sent: none can come later
        ids = [m["Message-ID"] for m in inbox.messages]
        assert len(ids) == len(set(ids)) == 4, ids
    finally:
        await client.close()


def refused(url: str) -> int:
    """Mails tried and refused, waiting in the outbox for their retry."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND attempts > 0"
        ).fetchone()
    return int(row[0]) if row else 0


async def test_the_service_refuses_a_database_that_is_not_utf8(
    pg_url: str, inbox: Inbox, tmp_path: Path
) -> None:
    """SQL_ASCII hands text back as bytes (a 500 on the first account); the service
    says so at start instead, and touches nothing."""
    name = f"prov_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
            " TEMPLATE template0"
        )
    url = psycopg.conninfo.make_conninfo(pg_url, dbname=name)
    try:
        settings = make_settings(url, smtp_host="127.0.0.1", smtp_port=inbox.port,
                                 port=free_port(), data=tmp_path)  # fmt: skip
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
        try:
            with pytest.raises(DatabaseUnfit, match="encoding is SQL_ASCII, not UTF8"):
                await client.start_server()
        finally:
            await client.close()
        with psycopg.connect(url) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            assert tables.fetchone() == (0,)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
