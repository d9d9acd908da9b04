"""The reader roles (a realtime node's Asterisk, the router's Kamailio) as an attacker
holding one of their logins: they read their own rows and nothing else, and can neither
hold the service's locks nor wake its workers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from provisioner.db import apply_queue, channels, locks, pjsip_rows
from provisioner.db import router as db_router
from provisioner.db.migrate import migrate

NOW = datetime(2026, 12, 4, tzinfo=UTC)
CHANNELS = ("apply_queue", "router_due", "events", "mail_outbox", "pjsip_due")
READER, READER_PASSWORD = "prov_attacker_reader", "attacker-pw"
ROUTER_READER, ROUTER_PASSWORD = "prov_attacker_router", "router-pw"
# Another node's secrets, which the reader of node-2 must never see.
SECRETS = ("s3cret-of-node-one", "0000", "12345678")


def login(db_url: str, role: str, password: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    return psycopg.conninfo.make_conninfo("", **{**info, "user": role, "password": password})


@pytest.fixture
async def readers(db_url: str) -> dict[str, str]:
    """node-1 has auths with passwords (one of them all digits, so a cast succeeds);
    a reader of node-2, which has one row of its own, and the router's reader."""
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        for i, password in enumerate(SECRETS):
            await pjsip_rows.replace(
                conn, "node-1", None,
                {("auth", f"one-{i}"): {"auth_type": "userpass", "username": f"u{i}",
                                        "password": password}},
                NOW,
            )  # fmt: skip
        await pjsip_rows.replace(
            conn, "node-2", None,
            {("auth", "two-0"): {"auth_type": "userpass", "username": "mine", "password": "pw"}},
            NOW,
        )  # fmt: skip
        await pjsip_rows.make_reader(conn, READER, READER_PASSWORD, "node-2")
        await db_router.make_reader(conn, ROUTER_READER, ROUTER_PASSWORD)
        await conn.commit()
    return {
        "pjsip": login(db_url, READER, READER_PASSWORD),
        "router": login(db_url, ROUTER_READER, ROUTER_PASSWORD),
    }


def leaked(text: str) -> list[str]:
    return [s for s in (*SECRETS, "one-0", "one-1", "one-2", "u0", "u1") if s in text]


def test_a_failing_cast_shows_no_other_node_password(readers: dict[str, str]) -> None:
    with psycopg.connect(readers["pjsip"], autocommit=True) as reader:
        reader.execute("SET enable_indexscan = off")
        reader.execute("SET enable_bitmapscan = off")
        for query in (
            "SELECT id FROM ps_auths WHERE password::int = 0",
            "SELECT id FROM ps_auths WHERE username::int = 0",
            "SELECT id FROM ps_auths WHERE id::int = 0",
        ):
            try:
                rows = reader.execute(query).fetchall()
            except psycopg.errors.InvalidTextRepresentation as exc:
                assert not leaked(str(exc)), (query, str(exc))
            else:
                assert rows == [], rows


def test_a_cheap_function_with_a_notice_sees_only_the_readers_rows(
    readers: dict[str, str],
) -> None:
    notices: list[str] = []
    with psycopg.connect(readers["pjsip"], autocommit=True) as reader:
        reader.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        reader.execute(
            "CREATE FUNCTION pg_temp.peek(text, text, text) RETURNS boolean"
            " LANGUAGE plpgsql COST 0.0000001 AS"
            " $$BEGIN RAISE NOTICE 'row % % %', $1, $2, $3; RETURN true; END$$"
        )
        rows = reader.execute(
            "SELECT id FROM ps_auths WHERE pg_temp.peek(id, username, password)"
        ).fetchall()
        reader.execute("SELECT id FROM ps_endpoints WHERE pg_temp.peek(id, auth, aors)")
        reader.execute("SELECT id FROM ps_aors WHERE pg_temp.peek(id, contact, contact)")
    assert rows == [("two-0",)]
    assert notices == ["row two-0 mine pw"], notices


def test_the_router_reader_reads_its_view_and_nothing_else(readers: dict[str, str]) -> None:
    with psycopg.connect(readers["router"], autocommit=True) as reader:
        assert reader.execute("SELECT count(*) FROM router_numbers").fetchone() == (0,)
        for table in ("router_blocks", "pjsip_objects", "pbxes", "pjsip_realtime.ps_auths",
                      "service_locks", "service_channel", "mail_outbox"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(f"SELECT * FROM {table}")


@pytest.mark.parametrize("role", ["pjsip", "router"])
def test_readers_cannot_take_the_service_locks_nor_read_its_channel(
    readers: dict[str, str], role: str
) -> None:
    with psycopg.connect(readers[role]) as reader:
        for query in (
            "SELECT 1 FROM public.service_locks FOR UPDATE",
            "LOCK TABLE public.schema_migrations IN EXCLUSIVE MODE",
            "SELECT secret FROM public.service_channel",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(query)
            reader.rollback()


# The advisory locks the service took before (events, router sync, migrations, and a
# node's applier): a reader may still take them, and the service must not care.
OLD_LOCKS = (
    "SELECT pg_advisory_lock(1702260340, 1)",
    "SELECT pg_advisory_lock(1702260340, 2)",
    "SELECT pg_advisory_lock(1886547830)",
    "SELECT pg_advisory_lock(hashtext('apply' || ':' || 'node-2'))",
    "SELECT pg_advisory_lock(hashtext('pjsip' || ':' || 'node-2'))",
)


async def test_a_reader_holding_advisory_locks_stalls_nothing(
    db_url: str, readers: dict[str, str]
) -> None:
    with psycopg.connect(readers["pjsip"], autocommit=True) as reader:
        for query in OLD_LOCKS:
            reader.execute(query)
        async with (
            AsyncConnectionPool(db_url, min_size=1, max_size=4, open=False) as pool,
            asyncio.timeout(10),
        ):
            async with (
                locks.held(pool, locks.node("node-2")) as mine,
                locks.held(pool, locks.node("node-2", "pjsip")) as also,
                locks.held(pool, locks.block("muc-main")) as router,
            ):
                assert mine and also and router
            async with pool.connection() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO events (event_id, type, at, data)"
                    " VALUES ('evt_x', 'router.routed', now(), '{}')"
                )
            async with pool.connection() as conn:
                await migrate(conn)
                cur = await conn.execute("SELECT position FROM events WHERE event_id = 'evt_x'")
                assert (await cur.fetchone() or (None,))[0] is not None


async def test_a_node_lock_is_one_holder_at_a_time(db_url: str) -> None:
    async with AsyncConnectionPool(db_url, min_size=1, max_size=4, open=False) as pool:
        async with (
            locks.held(pool, locks.node("node-1")) as first,
            locks.held(pool, locks.node("node-1")) as second,
            locks.held(pool, locks.node("node-9")) as other,
        ):
            assert (first, second, other) == (True, False, True)
        async with locks.held(pool, locks.node("node-1")) as again:
            assert again


async def test_a_reader_flooding_the_channels_reaches_no_listener(
    db_url: str, readers: dict[str, str]
) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
        for name in CHANNELS:
            await channels.listen(listener, name)
        with psycopg.connect(readers["pjsip"], autocommit=True) as reader:
            for name in CHANNELS:
                for _ in range(200):
                    reader.execute(f"NOTIFY {name}")
                reader.execute("SELECT pg_notify(%s, '')", (name,))
        # Sent after the flood, so delivered after it: the first one heard must be this.
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await channels.notify(conn, apply_queue.CHANNEL)
            await conn.commit()
        async with asyncio.timeout(10):
            first = await anext(aiter(listener.notifies()))
        assert first.channel.startswith(apply_queue.CHANNEL + "_"), first.channel
        assert len(first.channel) == len(apply_queue.CHANNEL) + 33


def test_nothing_of_the_service_runs_as_a_reader_could_write(db: psycopg.Connection[Any]) -> None:
    """The role-filtered views are security barriers (the attack above, declared)."""
    rows = db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'v' AND n.nspname IN ('public', 'pjsip_realtime')"
        " AND NOT coalesce('security_barrier=true' = ANY(c.reloptions), false)"
    ).fetchall()
    # The service's own views (no reader may read them) need no barrier.
    assert {r[0] for r in rows} <= {"block_usage", "router_usage"}, rows
