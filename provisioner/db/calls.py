"""Call records (usage per owner account) and how far each node's spool is imported."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from provisioner.db import Conn
from provisioner.domain.usage import CallRecord


@dataclass(frozen=True)
class SpoolPosition:
    inode: int
    head: str  # fingerprint of the file's first line (asterisk/cdr.py)
    byte_offset: int


async def spool_position(conn: Conn, node: str, now: datetime) -> SpoolPosition:
    """Where the node's import stands, locked until the caller's transaction ends: one
    importer per node across all instances (another waits for this one's batch)."""
    await conn.execute(
        "INSERT INTO cdr_spools (node, inode, byte_offset, updated_at) VALUES (%s, 0, 0, %s)"
        " ON CONFLICT (node) DO NOTHING",
        (node, now),
    )
    async with conn.cursor(row_factory=class_row(SpoolPosition)) as cur:
        await cur.execute(
            "SELECT inode, head, byte_offset FROM cdr_spools WHERE node = %s FOR UPDATE", (node,)
        )
        found = await cur.fetchone()
    assert found is not None
    return found


async def move_spool(
    conn: Conn, node: str, inode: int, head: str, offset: int, now: datetime
) -> None:
    await conn.execute(
        "UPDATE cdr_spools SET inode = %s, head = %s, byte_offset = %s, updated_at = %s"
        " WHERE node = %s",
        (inode, head, offset, now, node),
    )


async def insert(
    conn: Conn, node: str, records: list[CallRecord], now: datetime
) -> list[CallRecord]:
    """Store the records; returns those that were new (a record read again is skipped)."""
    if not records:
        return []
    columns = (
        "uniqueid", "sequence", "linkedid", "started_at", "answered_at", "ended_at",
        "duration", "billsec", "disposition", "direction", "number", "peer", "owner", "pbx",
        "block_id",
    )  # fmt: skip
    types = (
        "text", "int", "text", "timestamptz", "timestamptz", "timestamptz", "int", "int",
        "text", "text", "text", "text", "text", "text", "text",
    )  # fmt: skip
    arrays = [[getattr(r, c) for r in records] for c in columns]
    unnest = ", ".join(f"%s::{t}[]" for t in types)
    # The records, and in the same statement each new record added to its call's usage.
    cur = await conn.execute(
        f"WITH new AS (INSERT INTO calls (node, imported_at, {', '.join(columns)})"
        f"  SELECT %s, %s, * FROM unnest({unnest})"
        "   ON CONFLICT (node, uniqueid, sequence) DO NOTHING"
        "   RETURNING node, uniqueid, sequence, linkedid, block_id, owner, pbx, direction,"
        "             started_at, disposition, billsec),"
        " summed AS (INSERT INTO call_usage (node, linkedid, block_id, owner, pbx, direction,"
        "                                   started_at, answered, billsec)"
        "  SELECT node, linkedid, block_id, owner, pbx, direction, min(started_at),"
        "         bool_or(disposition = 'ANSWERED'), sum(billsec)"
        "  FROM new GROUP BY node, linkedid, block_id, owner, pbx, direction"
        "  ON CONFLICT (node, linkedid, block_id, owner, pbx, direction) DO UPDATE SET"
        "   started_at = least(call_usage.started_at, EXCLUDED.started_at),"
        "   answered = call_usage.answered OR EXCLUDED.answered,"
        "   billsec = call_usage.billsec + EXCLUDED.billsec)"
        " SELECT uniqueid, sequence FROM new",
        (node, now, *arrays),
    )
    new = {(row[0], row[1]) for row in await cur.fetchall()}
    return [r for r in records if (r.uniqueid, r.sequence) in new]


@dataclass(frozen=True)
class UsageRow:
    block_id: str | None
    owner: str | None
    pbx: str | None
    direction: str
    calls: int  # calls, not records: a call's legs (ring group, transfer) count once
    answered: int
    billsec: int


# What an account sees: the calls over its blocks (whoever's PBX used them) and the
# calls of its own PBX (over its own blocks or borrowed ones); not the calls of another
# PBX over that PBX's own blocks.
_VISIBLE = "(owner = %(customer)s OR pbx = %(customer)s)"
_PERIOD = "started_at >= %(start)s AND started_at < %(end)s"


async def usage(conn: Conn, customer: str, start: datetime, end: datetime) -> list[UsageRow]:
    async with conn.cursor(row_factory=class_row(UsageRow)) as cur:
        await cur.execute(
            "SELECT block_id, owner, pbx, direction, count(*)::int AS calls,"
            "       (count(*) FILTER (WHERE answered))::int AS answered,"
            "       coalesce(sum(billsec), 0)::int AS billsec"
            f" FROM call_usage WHERE {_VISIBLE} AND {_PERIOD}"
            " GROUP BY block_id, owner, pbx, direction"
            " ORDER BY block_id NULLS LAST, owner, pbx, direction",
            {"customer": customer, "start": start, "end": end},
        )
        return await cur.fetchall()


@dataclass(frozen=True)
class Call:
    id: int  # the cursor
    node: str
    uniqueid: str
    sequence: int
    linkedid: str
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime
    duration: int
    billsec: int
    disposition: str
    direction: str
    number: str | None
    peer: str | None
    owner: str | None
    pbx: str | None
    block_id: str | None


async def calls(
    conn: Conn, customer: str, start: datetime, end: datetime, after: int, limit: int
) -> list[Call]:
    """The account's call records in the period, in the order they were imported."""
    async with conn.cursor(row_factory=class_row(Call)) as cur:
        await cur.execute(
            "SELECT id, node, uniqueid, sequence, linkedid, started_at, answered_at,"
            "       ended_at, duration, billsec, disposition, direction, number, peer,"
            "       owner, pbx, block_id"
            f" FROM calls WHERE {_VISIBLE} AND {_PERIOD} AND id > %(after)s"
            " ORDER BY id LIMIT %(limit)s",
            {"customer": customer, "start": start, "end": end, "after": after, "limit": limit},
        )
        return await cur.fetchall()


async def forget_before(conn: Conn, before: datetime, batch: int = 10_000) -> int:
    """Delete up to `batch` records (and calls' usage) that started before `before`."""
    cur = await conn.execute(
        "DELETE FROM calls WHERE (node, uniqueid, sequence) IN ("
        "  SELECT node, uniqueid, sequence FROM calls WHERE started_at < %s LIMIT %s)",
        (before, batch),
    )
    await conn.execute(
        "DELETE FROM call_usage WHERE ctid IN ("
        "  SELECT ctid FROM call_usage WHERE started_at < %s LIMIT %s)",
        (before, batch),
    )
    return cur.rowcount


async def restart_spool(conn: Conn, node: str, now: datetime) -> None:
    """Import the node's spool from its start again (what is stored already is skipped)."""
    await conn.execute(
        "INSERT INTO cdr_spools (node, inode, byte_offset, updated_at) VALUES (%s, 0, 0, %s)"
        " ON CONFLICT (node) DO UPDATE SET byte_offset = 0, updated_at = EXCLUDED.updated_at",
        (node, now),
    )
