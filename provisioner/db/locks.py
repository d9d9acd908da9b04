"""The service's own locks: row locks on `service_locks` (migration 0014), which no
reader role can take, unlike an advisory lock. One applier and one PJSIP reloader per
node across all instances; one router sync at a time.

A node's lock is held for a whole round, across the round's own transactions: on a
connection of its own, in a transaction that only holds the row (seconds: a round's
length)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from psycopg_pool import AsyncConnectionPool

from provisioner.db import Conn


@contextlib.asynccontextmanager
async def held(
    pool: AsyncConnectionPool, node: str, role: str = "apply", *, wait: bool = False
) -> AsyncIterator[bool]:
    """The node's lock for this role while the block runs: True if taken, False if
    another holds it (with `wait`, waits for the holder instead: always True)."""
    name = f"{role}:{node}"
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        # Its own statement, committed at once: an insert in the holding transaction
        # would make a second taker wait on the insert instead of skipping.
        await conn.execute(
            "INSERT INTO service_locks (name) VALUES (%s) ON CONFLICT DO NOTHING", (name,)
        )
        async with conn.transaction():
            skip = "" if wait else " SKIP LOCKED"
            cur = await conn.execute(
                f"SELECT 1 FROM service_locks WHERE name = %s FOR NO KEY UPDATE{skip}", (name,)
            )
            yield await cur.fetchone() is not None


async def lock(conn: Conn, name: str) -> None:
    """Inside a transaction: wait for the holder of `name` ('router', ...) to commit."""
    await conn.execute("SELECT 1 FROM service_locks WHERE name = %s FOR NO KEY UPDATE", (name,))


async def share(conn: Conn, name: str) -> None:
    """Inside a transaction: wait for the holder of `name`'s lock to commit, and keep it
    from being taken until this one ends (others may share it meanwhile)."""
    await conn.execute("SELECT 1 FROM service_locks WHERE name = %s FOR SHARE", (name,))
