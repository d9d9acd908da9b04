"""The service's own locks: row locks on `service_locks` (migration 0014), which no
reader role can take, unlike an advisory lock. One applier and one PJSIP reloader per
node across all instances (`node`), one switch of a block on the SIP router at a time
(`block`).

A lock taken with `held` lasts while its block runs, across the block's own
transactions: on a connection of its own, in a transaction that only holds the row
(seconds: a round's or a router pass's length)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from psycopg_pool import AsyncConnectionPool


def block(block_id: str) -> str:
    """The name of a block's lock while the router step switches it."""
    return f"router:{block_id}"


def node(name: str, role: str = "apply") -> str:
    """The name of a node's lock for a role ("apply", "pjsip")."""
    return f"{role}:{name}"


@contextlib.asynccontextmanager
async def held(pool: AsyncConnectionPool, name: str, *, wait: bool = False) -> AsyncIterator[bool]:
    """The lock `name` while the block runs: True if taken, False if another holds it
    (with `wait`, waits for the holder instead: always True)."""
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
