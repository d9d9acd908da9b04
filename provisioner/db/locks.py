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


# Taken shared by every block switch and alone by a router's catch-up (a whole-table
# reload from the database): the reload waits for the switches under way to commit, so
# it reads each of them, and no switch sets a key on a router while it reloads.
ROUTER_TABLE = "router:table"


@contextlib.asynccontextmanager
async def held(
    pool: AsyncConnectionPool, name: str, *, wait: bool = False, sharing: str | None = None
) -> AsyncIterator[bool]:
    """The lock `name` while the block runs: True if taken, False if another holds it
    (with `wait`, waits for the holder instead: always True). With `sharing`, that
    lock is held too, shared with others that share it (waiting for one that holds it
    alone)."""
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        # Its own statement, committed at once: an insert in the holding transaction
        # would make a second taker wait on the insert instead of skipping.
        for each in (name, sharing) if sharing else (name,):
            await conn.execute(
                "INSERT INTO service_locks (name) VALUES (%s) ON CONFLICT DO NOTHING", (each,)
            )
        async with conn.transaction():
            skip = "" if wait else " SKIP LOCKED"
            cur = await conn.execute(
                f"SELECT 1 FROM service_locks WHERE name = %s FOR NO KEY UPDATE{skip}", (name,)
            )
            taken = await cur.fetchone() is not None
            if taken and sharing:
                await conn.execute(
                    "SELECT 1 FROM service_locks WHERE name = %s FOR SHARE", (sharing,)
                )
            yield taken
