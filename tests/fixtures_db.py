"""PostgreSQL for the tests: the session's server, a template database with every
migration, a clone of it per test, and a server of a test's own."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.db import embedded
from provisioner.db.migrate import migrate

# The tests' PostgreSQL servers live in memory where there is a tmpfs: each test clones
# the template database and drops its clone, and on this machine's disk a clone took
# ~0.3 s (its pages written and synced), on tmpfs ~0.01 s. A server's data survives its
# own stop and start there as on disk, which is all the restart tests need.
PG_PARENT = "/dev/shm" if os.access("/dev/shm", os.W_OK) else "/tmp"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """DATABASE_URL if set, else a private pgserver in a short /tmp path (socket limit)."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    folder = Path(tempfile.mkdtemp(prefix="prov-pg-", dir=PG_PARENT))
    try:
        url, server = embedded.start(folder / "pg", stop_at_exit=True)
    except Exception as exc:  # the reason must be in the failure, never a skip
        pytest.fail(f"cannot start the embedded PostgreSQL (pgserver): {exc}")
    yield url
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def _with_db(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **info)


@pytest.fixture(scope="session")
def template_db(pg_url: str) -> str:
    """A database with every migration applied, cloned for each test."""
    name = f"prov_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    async def apply() -> None:
        async with await psycopg.AsyncConnection.connect(_with_db(pg_url, name)) as conn:
            await migrate(conn)

    asyncio.run(apply())
    return name


@pytest.fixture
async def own_database() -> AsyncIterator[tuple[str, Path]]:
    """A PostgreSQL of the test's own (its URL and folder), so stopping or restarting it
    disturbs no other test; removed after."""
    folder = Path(tempfile.mkdtemp(prefix="prov-pgown-", dir=PG_PARENT)) / "pg"
    url, server = await asyncio.to_thread(embedded.start, folder)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
    try:
        yield url, folder
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture
def db_url(pg_url: str, template_db: str) -> Iterator[str]:
    name = f"prov_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_db(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection to the test's database, for looking at what the service wrote."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table we own: to prove that a refused request changed nothing.
    The tables come from the database's catalog, so a new table is never left out."""
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename NOT IN ('schema_migrations', 'mail_outbox') ORDER BY tablename"
        )
    ]
    assert "extensions" in tables and "config_revisions" in tables
    rows = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    # Which mails exist is the request's doing; whether they went out yet is the sender's.
    rows["mail_outbox"] = conn.execute(
        "SELECT id, message_id, recipient, subject, body FROM mail_outbox ORDER BY id"
    ).fetchall()
    return rows
