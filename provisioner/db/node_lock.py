"""One applier (and one PJSIP reloader) per node across all instances: a session
advisory lock on the node and role."""

from __future__ import annotations

from provisioner.db import Conn


async def try_node_lock(conn: Conn, node: str, role: str = "apply") -> bool:
    """The node's lock for this role, if no one holds it."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s || ':' || %s))", (role, node))
    row = await cur.fetchone()
    return bool(row and row[0])


async def wait_node_lock(conn: Conn, node: str, role: str = "apply") -> None:
    """As try_node_lock, but waits for the holder (a round) to finish."""
    await conn.execute("SELECT pg_advisory_lock(hashtext(%s || ':' || %s))", (role, node))


async def node_unlock(conn: Conn, node: str, role: str = "apply") -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtext(%s || ':' || %s))", (role, node))
