"""Accounts and their cloud PBXs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from psycopg.rows import class_row

from provisioner.db import Conn

T = TypeVar("T")


@dataclass(frozen=True)
class Account:
    customer: str
    name: str
    email: str
    language: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Pbx:
    id: int
    customer: str
    slug: str
    created_at: datetime
    node: str
    removed_at: datetime | None = None  # removed: the apply takes its config away
    leaving_node: str | None = None  # moving away from this node (until it left it)
    leaving_revision: int | None = None  # what the old node has of it, to remove


# Every column of a pbxes row (as `p`), named as Pbx's fields: the queries that read a
# PBX and more in one row select these first, and `with_pbx` builds the Pbx from them.
PBX_FIELDS = tuple(f.name for f in dataclasses.fields(Pbx))
PBX_COLUMNS = ", ".join(f"p.{name}" for name in PBX_FIELDS)


def with_pbx(cls: Callable[..., T]) -> Callable[[Any], Callable[[Sequence[Any]], T]]:
    """A row factory, like class_row: the row's Pbx columns become `pbx`, every other
    column the field of its name."""

    def maker(cursor: Any) -> Callable[[Sequence[Any]], T]:
        names = [column.name for column in cursor.description or ()]

        def make(values: Sequence[Any]) -> T:
            row = dict(zip(names, values, strict=True))
            pbx = Pbx(**{name: row.pop(name) for name in PBX_FIELDS})
            return cls(pbx=pbx, **row)

        return make

    return maker


class OfPbx:
    """Something the apply holds about one PBX: named by its id in queries and by its
    slug in logs and config."""

    pbx: Pbx

    @property
    def pbx_id(self) -> int:
        return self.pbx.id

    @property
    def slug(self) -> str:
        return self.pbx.slug


async def get(conn: Conn, customer: str, *, lock: bool = False) -> Account | None:
    query = "SELECT * FROM accounts WHERE customer = %s" + (" FOR NO KEY UPDATE" if lock else "")
    async with conn.cursor(row_factory=class_row(Account)) as cur:
        await cur.execute(query, (customer,))
        return await cur.fetchone()


async def upsert(
    conn: Conn, customer: str, name: str, email: str, language: str, now: datetime
) -> tuple[Account, bool]:
    """Create or update; return the account and whether it was created."""
    async with conn.cursor(row_factory=class_row(Account)) as cur:
        await cur.execute(
            "INSERT INTO accounts (customer, name, email, language, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (customer) DO NOTHING RETURNING *",
            (customer, name, email, language, now, now),
        )
        created = await cur.fetchone()
        if created is not None:
            return created, True
        await cur.execute(
            "UPDATE accounts SET name = %s, email = %s, language = %s,"
            " updated_at = CASE WHEN (name, email, language) = (%s, %s, %s)"
            "                   THEN updated_at ELSE %s END"
            " WHERE customer = %s RETURNING *",
            (name, email, language, name, email, language, now, customer),
        )
        updated = await cur.fetchone()
        assert updated is not None
        return updated, False


async def get_pbx(conn: Conn, customer: str, *, removed: bool = False) -> Pbx | None:
    """The account's PBX; a removed one only if asked for."""
    async with conn.cursor(row_factory=class_row(Pbx)) as cur:
        await cur.execute(
            "SELECT * FROM pbxes WHERE customer = %s AND (%s OR removed_at IS NULL)",
            (customer, removed),
        )
        return await cur.fetchone()


async def pbxes_on(conn: Conn, node: str) -> list[Pbx]:
    """The PBXs homed on the node (removed ones too: their removal goes with them),
    locked: two instances failing a node over move each PBX once."""
    async with conn.cursor(row_factory=class_row(Pbx)) as cur:
        await cur.execute("SELECT * FROM pbxes WHERE node = %s ORDER BY id FOR UPDATE", (node,))
        return await cur.fetchall()


async def remove_pbx(conn: Conn, pbx_id: int, now: datetime) -> None:
    """Mark the PBX removed and drop its phones and ring groups (their config goes with
    the next apply)."""
    await conn.execute("DELETE FROM ring_groups WHERE pbx_id = %s", (pbx_id,))
    await conn.execute("DELETE FROM extensions WHERE pbx_id = %s", (pbx_id,))
    await conn.execute("UPDATE pbxes SET removed_at = %s WHERE id = %s", (now, pbx_id))


async def revive_pbx(conn: Conn, pbx_id: int) -> Pbx:
    async with conn.cursor(row_factory=class_row(Pbx)) as cur:
        await cur.execute("UPDATE pbxes SET removed_at = NULL WHERE id = %s RETURNING *", (pbx_id,))
        row = await cur.fetchone()
    assert row is not None
    return row


async def move_pbx(conn: Conn, pbx_id: int, node: str) -> Pbx:
    """Home the PBX on `node`. Nothing of it is live there yet; the old node keeps its
    latest revision until the new node has it live (then apply/round.py removes it)."""
    async with conn.cursor(row_factory=class_row(Pbx)) as cur:
        await cur.execute(
            "UPDATE pbxes SET leaving_node = node, node = %s, leaving_revision ="
            " (SELECT max(revision) FROM config_revisions WHERE pbx_id = %s)"
            " WHERE id = %s RETURNING *",
            (node, pbx_id, pbx_id),
        )
        row = await cur.fetchone()
    assert row is not None
    # Nothing of it is live on the new node yet, and the router still sends its numbers
    # and phones to the old one: its router state says so until they switch (a PBX
    # never routed, or with no router, keeps none).
    await conn.execute(
        "UPDATE apply_state SET state = 'pending', dialplan_revision = NULL,"
        " pjsip_revision = NULL, good_revision = NULL,"
        " router = CASE WHEN router IS NULL THEN NULL ELSE 'pending' END, router_error = NULL"
        " WHERE pbx_id = %s",
        (pbx_id,),
    )
    return row


async def targeted_by(conn: Conn, pbx_id: int) -> list[str]:
    """Blocks assigned to this PBX or waiting for confirmations to be."""
    cur = await conn.execute(
        "SELECT block_id FROM assignments WHERE target_pbx_id = %s"
        " AND state IN ('pending', 'active') ORDER BY block_id",
        (pbx_id,),
    )
    return [row[0] for row in await cur.fetchall()]


async def get_pbx_by_id(conn: Conn, pbx_id: int) -> Pbx | None:
    async with conn.cursor(row_factory=class_row(Pbx)) as cur:
        await cur.execute("SELECT * FROM pbxes WHERE id = %s", (pbx_id,))
        return await cur.fetchone()


async def create_pbx(
    conn: Conn, customer: str, slug: str, node: str, now: datetime
) -> tuple[Pbx | None, bool]:
    """(the PBX, created); (None, False) when another account's PBX has the slug."""
    async with conn.cursor(row_factory=class_row(Pbx)) as cur:
        await cur.execute(
            "INSERT INTO pbxes (customer, slug, node, created_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING *",
            (customer, slug, node, now),
        )
        created = await cur.fetchone()
    if created is not None:
        return created, True
    return await get_pbx(conn, customer, removed=True), False
