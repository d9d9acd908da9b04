"""Wake-ups between the service's parts and instances: LISTEN/NOTIFY on channels named
with a secret of the database (migration 0014), so that no reader role, which may
NOTIFY any channel it can name, can reach the service's. A notification only shortens a
worker's wait (workers/loop.py): the periodic poll is what guarantees progress."""

from __future__ import annotations

from provisioner.db import Conn


async def notify(conn: Conn, channel: str) -> None:
    """Inside a transaction: wake `channel`'s listeners when it commits (once, however
    often a transaction calls this)."""
    await conn.execute("SELECT pg_notify(%s || '_' || secret, '') FROM service_channel", (channel,))


async def listen(conn: Conn, channel: str) -> None:
    """On an autocommit connection: receive `channel`'s notifications from now on."""
    cur = await conn.execute("SELECT %s || '_' || secret FROM service_channel", (channel,))
    row = await cur.fetchone()
    if row is None:
        raise LookupError("service_channel is empty: the database is not migrated")
    # A channel name is an identifier; the secret is hex (the table's CHECK).
    await conn.execute(f'LISTEN "{row[0]}"')
