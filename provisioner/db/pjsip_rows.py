"""The PJSIP objects a realtime node's Asterisk reads (migration 0013): one row per
endpoint, AOR and auth of a PBX on that node, and the login roles that read them."""

from __future__ import annotations

from datetime import datetime

from psycopg import sql
from psycopg.types.json import Jsonb

from provisioner.db import Conn

Key = tuple[str, str]  # (type, id)
Fields = dict[str, str]


async def of_pbx(conn: Conn, node: str, pbx_id: int | None) -> dict[Key, Fields]:
    """A PBX's rows on the node (None: the node's own)."""
    cur = await conn.execute(
        "SELECT type, id, fields FROM pjsip_objects"
        " WHERE node = %s AND pbx_id IS NOT DISTINCT FROM %s",
        (node, pbx_id),
    )
    return {(t, i): dict(f) for t, i, f in await cur.fetchall()}


async def of_node(conn: Conn, node: str) -> dict[int | None, dict[Key, Fields]]:
    """Every row on the node, by PBX id (None: the node's own)."""
    cur = await conn.execute(
        "SELECT pbx_id, type, id, fields FROM pjsip_objects WHERE node = %s", (node,)
    )
    found: dict[int | None, dict[Key, Fields]] = {}
    for pbx_id, t, i, f in await cur.fetchall():
        found.setdefault(pbx_id, {})[(t, i)] = dict(f)
    return found


async def replace(
    conn: Conn, node: str, pbx_id: int | None, wanted: dict[Key, Fields], now: datetime
) -> set[Key]:
    """Make the PBX's rows on the node (None: the node's own) `wanted`; the keys that
    changed (new, changed or gone). Rows that did not change are not touched. Only the
    node's apply writes them, under its node lock (db/locks.py)."""
    have = await of_pbx(conn, node, pbx_id)
    gone = [key for key in have if key not in wanted]
    changed = [key for key, fields in wanted.items() if have.get(key) != fields]
    if gone:
        await conn.execute(
            "DELETE FROM pjsip_objects WHERE node = %s AND pbx_id IS NOT DISTINCT FROM %s"
            " AND (type, id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            (node, pbx_id, [t for t, _ in gone], [i for _, i in gone]),
        )
    for t, i in changed:
        await conn.execute(
            "INSERT INTO pjsip_objects (node, type, id, pbx_id, fields, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (node, type, id) DO UPDATE"
            " SET pbx_id = EXCLUDED.pbx_id, fields = EXCLUDED.fields,"
            " updated_at = EXCLUDED.updated_at",
            (node, t, i, pbx_id, Jsonb(wanted[(t, i)]), now),
        )
    return set(gone) | set(changed)


async def readers(conn: Conn, node: str) -> int:
    """How many login roles read the node's rows (0: its Asterisk cannot)."""
    cur = await conn.execute("SELECT count(*) FROM pjsip_readers WHERE node = %s", (node,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def make_reader(conn: Conn, role: str, password: str, node: str) -> None:
    """A login role that may read the node's rows through the views of schema
    pjsip_realtime and nothing else (the node's Asterisk); an existing one gets the new
    password and the node."""
    cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    verb = "ALTER" if await cur.fetchone() else "CREATE"
    name = sql.Identifier(role)
    await conn.execute(
        sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            name, sql.Literal(password)
        )
    )
    await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA pjsip_realtime TO {}").format(name))
    await conn.execute(
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA pjsip_realtime TO {}").format(name)
    )
    # Asterisk names the tables without a schema (extconfig.conf: ps_endpoints).
    await conn.execute(sql.SQL("ALTER ROLE {} SET search_path = pjsip_realtime").format(name))
    await conn.execute(
        "INSERT INTO pjsip_readers (role, node) VALUES (%s, %s)"
        " ON CONFLICT (role) DO UPDATE SET node = EXCLUDED.node",
        (role, node),
    )


async def pbxes_without_rows(conn: Conn, node: str) -> list[int]:
    """The PBXs on the node that have no row there (the node was just switched to
    realtime, or they were never applied since)."""
    cur = await conn.execute(
        "SELECT p.id FROM pbxes p WHERE p.node = %s AND p.removed_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM pjsip_objects o WHERE o.node = p.node"
        " AND o.pbx_id = p.id) ORDER BY p.id",
        (node,),
    )
    return [row[0] for row in await cur.fetchall()]


async def forget_node(conn: Conn, node: str) -> int:
    """A files node's rows (left from when it was a realtime node) go."""
    cur = await conn.execute("DELETE FROM pjsip_objects WHERE node = %s", (node,))
    return cur.rowcount
