"""Number blocks and the spans that keep their numbers from overlapping."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import errors
from psycopg.rows import class_row
from psycopg.types.range import Range

from provisioner.db import Conn
from provisioner.domain.numbers import Block


@dataclass(frozen=True)
class BlockRow:
    id: str
    owner: str
    base_number: str
    range_first: str | None
    range_last: str | None
    country_code: int
    area_code: str
    mode: str
    created_at: datetime
    updated_at: datetime

    @property
    def block(self) -> Block:
        return Block(
            self.base_number, self.range_first, self.range_last, self.country_code, self.area_code
        )


COLUMNS = (
    "id, owner, base_number, range_first, range_last, country_code, area_code, mode,"
    " created_at, updated_at"
)


class Overlap(Exception):
    """The block's numbers overlap another block's."""


async def get(conn: Conn, block_id: str, *, lock: bool = False) -> BlockRow | None:
    query = f"SELECT {COLUMNS} FROM blocks WHERE id = %s" + (" FOR NO KEY UPDATE" if lock else "")
    async with conn.cursor(row_factory=class_row(BlockRow)) as cur:
        await cur.execute(query, (block_id,))
        return await cur.fetchone()


async def of_owner(conn: Conn, owner: str) -> list[BlockRow]:
    async with conn.cursor(row_factory=class_row(BlockRow)) as cur:
        await cur.execute(f"SELECT {COLUMNS} FROM blocks WHERE owner = %s ORDER BY id", (owner,))
        return await cur.fetchall()


async def insert(
    conn: Conn, block_id: str, owner: str, block: Block, mode: str, now: datetime
) -> BlockRow | None:
    """Insert the block and its spans; None if the id exists. Raises Overlap."""
    async with conn.cursor(row_factory=class_row(BlockRow)) as cur:
        await cur.execute(
            "INSERT INTO blocks (id, owner, base_number, range_first, range_last, country_code,"
            " area_code, mode, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            f" ON CONFLICT (id) DO NOTHING RETURNING {COLUMNS}",
            (
                block_id,
                owner,
                block.base,
                block.range_first,
                block.range_last,
                block.country_code,
                block.area_code,
                mode,
                now,
                now,
            ),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    try:
        async with conn.transaction():
            for span in block.spans():
                low, high = span.key_range()
                await conn.execute(
                    "INSERT INTO block_spans (block_id, span) VALUES (%s, %s)",
                    (block_id, Range(low, high, "[]")),
                )
    except errors.ExclusionViolation:
        raise Overlap from None
    return row


async def overlapping(conn: Conn, block: Block) -> list[tuple[str, str]]:
    """(id, owner) of the blocks whose numbers overlap these."""
    found: set[tuple[str, str]] = set()
    for span in block.spans():
        low, high = span.key_range()
        cur = await conn.execute(
            "SELECT s.block_id, b.owner FROM block_spans s JOIN blocks b ON b.id = s.block_id"
            " WHERE s.span && %s",
            (Range(low, high, "[]"),),
        )
        found.update((row[0], row[1]) for row in await cur.fetchall())
    return sorted(found)


async def set_mode(conn: Conn, block_id: str, mode: str, now: datetime) -> BlockRow:
    async with conn.cursor(row_factory=class_row(BlockRow)) as cur:
        await cur.execute(
            f"UPDATE blocks SET mode = %s, updated_at = %s WHERE id = %s RETURNING {COLUMNS}",
            (mode, now, block_id),
        )
        row = await cur.fetchone()
    assert row is not None
    return row
