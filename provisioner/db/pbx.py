"""The PBX model: extensions, ring groups, and the blocks a PBX uses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row, dict_row

from provisioner.db import Conn
from provisioner.db.blocks import COLUMNS, BlockRow

BLOCK_FIELDS = tuple(f.name for f in dataclasses.fields(BlockRow))


@dataclass(frozen=True)
class Extension:
    pbx_id: int
    ext: str
    name: str
    site_block: str
    did: str | None
    pickup_group: str | None
    created_at: datetime
    updated_at: datetime
    sip_realm: str  # the digest realm its password hash was made for
    sip_ha1: str  # md5(username:realm:password); the password itself is never stored


@dataclass(frozen=True)
class RingGroup:
    pbx_id: int
    ext: str
    name: str
    strategy: str
    members: list[str]
    ring_seconds: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class UsedBlock:
    """A block a PBX uses, with its owner's customer number and the trunk credentials."""

    block: BlockRow
    trunk_username: str | None
    trunk_sealed: str | None  # the password, sealed (domain.credentials)
    trunk_unsealed_legacy: str | None  # written before sealing existed; sealed at start
    default_target: str | None
    trunk_register: bool = False  # the trunk registers with the carrier


async def lock_pbx(conn: Conn, pbx_id: int) -> None:
    """Serialize changes to one PBX's numbering plan (extensions and groups share it)."""
    await conn.execute("SELECT 1 FROM pbxes WHERE id = %s FOR NO KEY UPDATE", (pbx_id,))


async def extensions(conn: Conn, pbx_id: int) -> list[Extension]:
    async with conn.cursor(row_factory=class_row(Extension)) as cur:
        await cur.execute(
            "SELECT * FROM extensions WHERE pbx_id = %s ORDER BY length(ext), ext", (pbx_id,)
        )
        return await cur.fetchall()


async def extension(conn: Conn, pbx_id: int, ext: str) -> Extension | None:
    async with conn.cursor(row_factory=class_row(Extension)) as cur:
        await cur.execute("SELECT * FROM extensions WHERE pbx_id = %s AND ext = %s", (pbx_id, ext))
        return await cur.fetchone()


async def upsert_extension(
    conn: Conn,
    pbx_id: int,
    ext: str,
    *,
    name: str,
    site_block: str,
    did: str | None,
    pickup_group: str | None,
    new_credentials: tuple[str, str],
    now: datetime,
) -> tuple[Extension, bool]:
    """Create or update (the caller holds the PBX lock); the credentials (realm, HA1) are
    set on creation only. Returns (row, created)."""
    existed = await extension(conn, pbx_id, ext) is not None
    async with conn.cursor(row_factory=class_row(Extension)) as cur:
        if existed:
            await cur.execute(
                "UPDATE extensions SET name = %s, site_block = %s, did = %s, pickup_group = %s,"
                " updated_at = %s WHERE pbx_id = %s AND ext = %s RETURNING *",
                (name, site_block, did, pickup_group, now, pbx_id, ext),
            )
        else:
            await cur.execute(
                "INSERT INTO extensions (pbx_id, ext, name, site_block, did, pickup_group,"
                " sip_realm, sip_ha1, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
                (pbx_id, ext, name, site_block, did, pickup_group, *new_credentials, now, now),
            )
        row = await cur.fetchone()
    assert row is not None
    return row, not existed


async def did_owner(conn: Conn, did: str) -> tuple[int, str] | None:
    """(pbx_id, ext) of the extension that has this DID."""
    cur = await conn.execute("SELECT pbx_id, ext FROM extensions WHERE did = %s", (did,))
    row = await cur.fetchone()
    return (row[0], row[1]) if row else None


async def delete_extension(conn: Conn, pbx_id: int, ext: str) -> bool:
    cur = await conn.execute("DELETE FROM extensions WHERE pbx_id = %s AND ext = %s", (pbx_id, ext))
    return cur.rowcount > 0


async def delete_ring_group(conn: Conn, pbx_id: int, ext: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM ring_groups WHERE pbx_id = %s AND ext = %s", (pbx_id, ext)
    )
    return cur.rowcount > 0


async def ring_groups(conn: Conn, pbx_id: int) -> list[RingGroup]:
    async with conn.cursor(row_factory=class_row(RingGroup)) as cur:
        await cur.execute(
            "SELECT * FROM ring_groups WHERE pbx_id = %s ORDER BY length(ext), ext", (pbx_id,)
        )
        return await cur.fetchall()


async def ring_group(conn: Conn, pbx_id: int, ext: str) -> RingGroup | None:
    async with conn.cursor(row_factory=class_row(RingGroup)) as cur:
        await cur.execute("SELECT * FROM ring_groups WHERE pbx_id = %s AND ext = %s", (pbx_id, ext))
        return await cur.fetchone()


async def upsert_ring_group(
    conn: Conn,
    pbx_id: int,
    ext: str,
    *,
    name: str,
    strategy: str,
    members: list[str],
    ring_seconds: int,
    now: datetime,
) -> tuple[RingGroup, bool]:
    existed = await ring_group(conn, pbx_id, ext) is not None
    async with conn.cursor(row_factory=class_row(RingGroup)) as cur:
        await cur.execute(
            "INSERT INTO ring_groups (pbx_id, ext, name, strategy, members, ring_seconds,"
            " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (pbx_id, ext) DO UPDATE SET name = EXCLUDED.name,"
            " strategy = EXCLUDED.strategy, members = EXCLUDED.members,"
            " ring_seconds = EXCLUDED.ring_seconds, updated_at = EXCLUDED.updated_at"
            " RETURNING *",
            (pbx_id, ext, name, strategy, members, ring_seconds, now, now),
        )
        row = await cur.fetchone()
    assert row is not None
    return row, not existed


# Which PBX uses a block, the one rule every API answer, config, apply and the router
# follow: the target PBX of an active assignment; otherwise, for a `pbx` block, its
# owner's own PBX. Declared once, as the view block_usage (migration 0012); callers
# add " AND ...".
_USAGE = (
    " FROM block_usage u JOIN blocks b ON b.id = u.block_id JOIN pbxes p ON p.id = u.pbx_id"
    " WHERE true"
)


# Blocks a PBX keeps serving after they moved to another node (or to nobody), until the
# SIP router sends their numbers elsewhere (router/sync.py switches them): make before
# break. A block the router is being switched to it right now (router_switching) too,
# whatever its usage meanwhile. Without a router, both tables are empty: nothing is held.
_ROUTED = (
    "(SELECT block_id, pbx_id, node FROM router_blocks"
    " UNION SELECT block_id, pbx_id, node FROM router_switching)"
)
_HELD = (
    f" FROM {_ROUTED} r JOIN blocks b ON b.id = r.block_id"
    " JOIN pbxes p ON p.id = r.pbx_id AND p.node = r.node AND p.removed_at IS NULL"
    " WHERE NOT EXISTS (SELECT 1 FROM block_usage w"
    "                   WHERE w.block_id = r.block_id AND w.node = r.node)"
    "   AND r.pbx_id = %s"
)


async def pbx_using(conn: Conn, block_id: str) -> int | None:
    """The id of the PBX that uses the block now, if any."""
    cur = await conn.execute("SELECT p.id" + _USAGE + " AND b.id = %s", (block_id,))
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def used_blocks(conn: Conn, pbx_id: int) -> list[UsedBlock]:
    """The blocks this PBX uses now, with their trunk and default target."""
    columns = ", ".join(f"b.{c.strip()}" for c in COLUMNS.split(","))

    def select(target: str) -> str:
        return (
            f"SELECT {columns}, b.trunk_username, b.trunk_sealed,"
            " b.trunk_password AS trunk_unsealed_legacy,"
            " (SELECT t.target FROM default_targets t WHERE t.pbx_id = p.id"
            f"  AND t.block_id = b.id {target}) AS default_target, b.trunk_register"
        )

    # A block used now rings its current choice; a held one also a choice that ended
    # (a reset) while the router still sends its numbers here.
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            select("AND t.ended_at IS NULL") + _USAGE + " AND p.id = %s UNION "
            + select("") + _HELD + " ORDER BY 1",
            (pbx_id, pbx_id),
        )  # fmt: skip
        rows = await cur.fetchall()
    # By name: the block's columns make its BlockRow, the rest UsedBlock's own fields.
    return [UsedBlock(BlockRow(**{f: row.pop(f) for f in BLOCK_FIELDS}), **row) for row in rows]


async def set_trunk(
    conn: Conn, block_id: str, username: str, sealed: str, register: bool, now: datetime
) -> None:
    await conn.execute(
        "UPDATE blocks SET trunk_username = %s, trunk_sealed = %s, trunk_password = NULL,"
        " trunk_register = %s, updated_at = %s WHERE id = %s",
        (username, sealed, register, now, block_id),
    )


async def unsealed_trunks(conn: Conn) -> list[tuple[str, str]]:
    """(block id, plain password) of trunks written before passwords were sealed."""
    cur = await conn.execute(
        "SELECT id, trunk_password FROM blocks WHERE trunk_password IS NOT NULL FOR UPDATE"
    )
    return [(row[0], row[1]) for row in await cur.fetchall()]


async def sealed_trunks(conn: Conn) -> list[tuple[str, str]]:
    """(block id, sealed password) of every sealed trunk, locked for resealing."""
    cur = await conn.execute(
        "SELECT id, trunk_sealed FROM blocks WHERE trunk_sealed IS NOT NULL ORDER BY id FOR UPDATE"
    )
    return [(row[0], row[1]) for row in await cur.fetchall()]


async def store_sealed(conn: Conn, block_id: str, sealed: str) -> None:
    """Replace the stored form of a trunk password (sealing or resealing: same secret)."""
    await conn.execute(
        "UPDATE blocks SET trunk_sealed = %s, trunk_password = NULL WHERE id = %s",
        (sealed, block_id),
    )


async def set_default_target(
    conn: Conn, pbx_id: int, block_id: str, target: str | None, now: datetime
) -> None:
    """Where the PBX's unrouted numbers of the block ring; None: nowhere (busy)."""
    if target is None:
        await forget_default_target(conn, pbx_id, block_id)
        return
    await conn.execute(
        "INSERT INTO default_targets (pbx_id, block_id, target, updated_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (pbx_id, block_id)"
        " DO UPDATE SET target = EXCLUDED.target, updated_at = EXCLUDED.updated_at,"
        " ended_at = NULL",
        (pbx_id, block_id, target, now),
    )


async def forget_default_target(conn: Conn, pbx_id: int, block_id: str) -> None:
    await conn.execute(
        "DELETE FROM default_targets WHERE pbx_id = %s AND block_id = %s", (pbx_id, block_id)
    )


async def end_default_target(conn: Conn, pbx_id: int, block_id: str, now: datetime) -> None:
    """The PBX stops using the block: its default target goes, but while the SIP router
    still sends the block's numbers to it (`_HELD`) it only ends: the PBX keeps ringing
    it until the router has switched, and the router step deletes it then (db/router.py
    `routed`). Make before break for a reset, as for a move."""
    await conn.execute(
        "DELETE FROM default_targets t WHERE pbx_id = %s AND block_id = %s"
        f" AND NOT EXISTS (SELECT 1 FROM {_ROUTED} r"
        "                 WHERE r.block_id = t.block_id AND r.pbx_id = t.pbx_id)",
        (pbx_id, block_id),
    )
    await conn.execute(
        "UPDATE default_targets SET ended_at = %s WHERE pbx_id = %s AND block_id = %s",
        (now, pbx_id, block_id),
    )


async def drop_default_target_ringing_nothing(conn: Conn, pbx_id: int, block_id: str) -> None:
    await conn.execute(
        "DELETE FROM default_targets t WHERE pbx_id = %s AND block_id = %s"
        " AND NOT EXISTS (SELECT 1 FROM extensions e"
        "   WHERE e.pbx_id = t.pbx_id AND e.ext = t.target)"
        " AND NOT EXISTS (SELECT 1 FROM ring_groups g"
        "   WHERE g.pbx_id = t.pbx_id AND g.ext = t.target)",
        (pbx_id, block_id),
    )


async def blocks_ringing(conn: Conn, pbx_id: int, ext: str) -> list[str]:
    """The blocks whose unrouted numbers this PBX sends to `ext` (used now or soon)."""
    cur = await conn.execute(
        "SELECT block_id FROM default_targets WHERE pbx_id = %s AND target = %s"
        " AND ended_at IS NULL ORDER BY block_id",
        (pbx_id, ext),
    )
    return [row[0] for row in await cur.fetchall()]


async def is_target(conn: Conn, pbx_id: int, ext: str) -> bool:
    """An extension or a ring group of the PBX: something a call can ring."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM extensions WHERE pbx_id = %s AND ext = %s)"
        " OR EXISTS (SELECT 1 FROM ring_groups WHERE pbx_id = %s AND ext = %s)",
        (pbx_id, ext, pbx_id, ext),
    )
    row = await cur.fetchone()
    return bool(row and row[0])
