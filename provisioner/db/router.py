"""The router's table: where each block's numbers belong (the view `block_usage`), what
the router has been told (`router_blocks`), and the per-PBX router state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from provisioner.db import Conn, apply_queue, channels, events
from provisioner.domain.events import RouterOutcome
from provisioner.domain.numbers import LENGTH_FACTOR, Span, routing_keys

CHANNEL = "router_due"
# The router's entry of a PBX itself (its phones, by its SIP domain), beside its blocks':
# its id and its one key are both PBX_ENTRY + slug (migration 0020, router_usage).
PBX_ENTRY = "pbx:"
# A block's spans as [low, high) in the overlap index's encoding (domain/numbers.py
# Span.key_range), in order.
_SPANS = (
    "ARRAY(SELECT ARRAY[lower(s.span), upper(s.span)] FROM block_spans s"
    " WHERE s.block_id = {block} ORDER BY lower(s.span))"
)


@dataclass(frozen=True)
class Change:
    """A block whose router entry differs from where its numbers belong now."""

    block_id: str
    pbx_id: int | None  # None: nobody uses the block now; its entries go
    node: str | None
    keys: tuple[str, ...]  # the block's router keys now (empty if gone)
    old_pbx_id: int | None  # None: the router has no entry yet
    old_node: str | None
    old_keys: tuple[str, ...]


def _keys(spans: list[list[int]]) -> tuple[str, ...]:
    """The router keys of a block's spans as the database encodes them."""
    return tuple(
        routing_keys([
            Span(low % LENGTH_FACTOR, (high - 1) % LENGTH_FACTOR, low // LENGTH_FACTOR)
            for low, high in spans
        ])
    )  # fmt: skip


async def switching(conn: Conn, changes: list[Change], now: datetime) -> None:
    """Before the router is told: where each block is being switched to. The PBX there
    holds the block as the old one does, until `routed` records the switch."""
    for change in changes:
        if change.pbx_id is not None and change.node is not None:
            await conn.execute(
                "INSERT INTO router_switching (block_id, pbx_id, node, since)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (change.block_id, change.pbx_id, change.node, now),
            )


async def notify_due(conn: Conn) -> None:
    """Wake the router step when this transaction commits."""
    await channels.notify(conn, CHANNEL)


async def set_nodes(conn: Conn, nodes: dict[str, str], now: datetime) -> None:
    """The nodes' SIP addresses as the settings say (name -> sip URI); others go."""
    await conn.execute("DELETE FROM router_nodes WHERE NOT (name = ANY(%s))", (list(nodes),))
    for name, uri in nodes.items():
        await conn.execute(
            "INSERT INTO router_nodes (name, sip_uri, updated_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET sip_uri = EXCLUDED.sip_uri,"
            " updated_at = EXCLUDED.updated_at WHERE router_nodes.sip_uri <> EXCLUDED.sip_uri",
            (name, uri, now),
        )


async def node_uris(conn: Conn) -> dict[str, str]:
    cur = await conn.execute("SELECT name, sip_uri FROM router_nodes")
    return {row[0]: row[1] for row in await cur.fetchall()}


async def due(conn: Conn, limit: int) -> list[Change]:
    """Entries to switch now: a block moved to a PBX whose config is live on its node
    (no apply job left, its dialplan at its latest revision: make before break), a PBX
    whose phones' endpoints are live on its node too (its PJSIP as well), or an entry
    nobody uses any more (it can go at once)."""
    cur = await conn.execute(
        "SELECT coalesce(w.block_id, r.block_id), w.pbx_id, w.node,"
        f" CASE WHEN w.block_id IS NULL THEN NULL ELSE {_SPANS.format(block='w.block_id')} END,"
        " r.pbx_id, r.node, coalesce(r.keys, '{}')"
        " FROM router_usage w FULL JOIN router_blocks r ON r.block_id = w.block_id"
        " WHERE (w.node IS DISTINCT FROM r.node OR w.pbx_id IS DISTINCT FROM r.pbx_id)"
        "   AND (w.pbx_id IS NULL OR ("
        "     NOT EXISTS (SELECT 1 FROM apply_queue q WHERE q.pbx_id = w.pbx_id)"
        "     AND EXISTS (SELECT 1 FROM apply_state st WHERE st.pbx_id = w.pbx_id"
        "                 AND st.dialplan_revision = st.revision"
        # A PBX's own entry sends its phones there: its endpoints must be live too.
        f"                 AND (w.block_id NOT LIKE '{PBX_ENTRY}%%'"
        "                      OR st.pjsip_revision = st.revision))))"
        " ORDER BY 1 LIMIT %s",
        (limit,),
    )
    rows = await cur.fetchall()
    return [
        Change(r[0], r[1], r[2], _entry_keys(r[0], r[1], r[3]), r[4], r[5], tuple(r[6]))
        for r in rows
    ]


def _entry_keys(entry: str, pbx_id: int | None, spans: list[list[int]] | None) -> tuple[str, ...]:
    """A PBX's entry has one key, its id; a block's are its spans' keys (none: gone)."""
    if entry.startswith(PBX_ENTRY):
        return (entry,) if pbx_id is not None else ()
    return _keys(spans or [])


async def routed(conn: Conn, change: Change, now: datetime) -> None:
    """The router has the change (read back). The PBX it no longer sends the block to
    forgets a default target for it that ended while it held the block (db/pbx.py
    `end_default_target`); a choice made since (a new assignment) has no end and stays."""
    if change.old_pbx_id is not None and change.old_pbx_id != change.pbx_id:
        await conn.execute(
            "DELETE FROM default_targets WHERE pbx_id = %s AND block_id = %s"
            " AND ended_at IS NOT NULL",
            (change.old_pbx_id, change.block_id),
        )
    await conn.execute("DELETE FROM router_switching WHERE block_id = %s", (change.block_id,))
    if change.pbx_id is None or not change.keys:
        await conn.execute("DELETE FROM router_blocks WHERE block_id = %s", (change.block_id,))
        return
    await conn.execute(
        "INSERT INTO router_blocks (block_id, node, pbx_id, keys, updated_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (block_id) DO UPDATE SET"
        " node = EXCLUDED.node, pbx_id = EXCLUDED.pbx_id, keys = EXCLUDED.keys,"
        " updated_at = EXCLUDED.updated_at",
        (change.block_id, change.node, change.pbx_id, list(change.keys), now),
    )


async def record_routed(conn: Conn, change: Change, now: datetime) -> None:
    """The router holds the change (read back), in the caller's transaction: the entry
    recorded; the PBX it no longer sends a moved block to gets an apply (its old node
    held the block until now and stops serving it); the PBX whose entry switched hears
    it (`router.routed`: its numbers reach the node now), its state saying whether any
    block still waits; the next pass is woken, as it may find more."""
    await routed(conn, change, now)
    if change.old_pbx_id is not None and change.old_node != change.node:
        await apply_queue.request(
            conn, change.old_pbx_id, f"router sends {change.block_id} elsewhere", now
        )
    if change.pbx_id is not None:
        await lock_pbx_states(conn, {change.pbx_id})
        if change.pbx_id not in await pending_pbxes(conn):
            await set_pbx_state(conn, {change.pbx_id}, "routed", None, now)
        await _event(conn, "router.routed", change, None, now)
    await notify_due(conn)


async def record_pending(conn: Conn, change: Change, error: str, now: datetime) -> None:
    """The change is not done (why: `error`): its PBX's router state is pending, and the
    PBX hears it when its state or reason changed."""
    if change.pbx_id is not None and await set_pbx_state(
        conn, {change.pbx_id}, "pending", error, now
    ):
        await _event(conn, "router.pending", change, error, now)


async def _event(conn: Conn, type_: str, change: Change, error: str | None, now: datetime) -> None:
    """The event of a PBX's router state; it names the block (not its own entry, its
    phones: the portal knows blocks)."""
    assert change.pbx_id is not None
    home = await pbx_home(conn, change.pbx_id)
    if home is None:
        return
    customer, node = home
    blocks = [] if change.block_id.startswith(PBX_ENTRY) else [change.block_id]
    outcome = RouterOutcome(customer=customer, node=node, blocks=blocks, error=error)
    await events.emit(conn, type_, outcome, now)


async def set_pbx_state(
    conn: Conn, pbx_ids: set[int], state: str, error: str | None, now: datetime
) -> list[int]:
    """Set the PBXs' router state; returns those whose state or reason changed."""
    cur = await conn.execute(
        "UPDATE apply_state SET router = %s, router_error = %s, updated_at = %s"
        " WHERE pbx_id = ANY(%s)"
        " AND (router IS DISTINCT FROM %s OR router_error IS DISTINCT FROM %s)"
        " RETURNING pbx_id",
        (state, error, now, list(pbx_ids), state, error),
    )
    return sorted(row[0] for row in await cur.fetchall())


async def pbx_home(conn: Conn, pbx_id: int) -> tuple[str, str] | None:
    """(customer, node) of a PBX."""
    cur = await conn.execute("SELECT customer, node FROM pbxes WHERE id = %s", (pbx_id,))
    row = await cur.fetchone()
    return (row[0], row[1]) if row else None


async def lock_pbx_states(conn: Conn, pbx_ids: set[int]) -> None:
    """Hold the PBXs' router state until commit: two switches of one PBX's entries that
    commit side by side each see the other's before deciding whether the PBX is routed
    (the second waits for the first; else each sees the other pending, and neither
    says routed)."""
    await conn.execute(
        "SELECT 1 FROM apply_state WHERE pbx_id = ANY(%s) ORDER BY pbx_id FOR UPDATE",
        (sorted(pbx_ids),),
    )


async def pending_pbxes(conn: Conn) -> set[int]:
    """PBXs whose numbers the router does not yet send to their node."""
    cur = await conn.execute(
        "SELECT w.pbx_id FROM router_usage w LEFT JOIN router_blocks r"
        " ON r.block_id = w.block_id"
        " WHERE r.node IS DISTINCT FROM w.node OR r.pbx_id IS DISTINCT FROM w.pbx_id"
    )
    return {row[0] for row in await cur.fetchall()}


async def routed_to(conn: Conn, pbx_id: int, node: str) -> int:
    """How many blocks the router still sends to this PBX on this node."""
    cur = await conn.execute(
        "SELECT count(*) FROM router_blocks WHERE pbx_id = %s AND node = %s", (pbx_id, node)
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def table(conn: Conn) -> dict[str, str]:
    """Every key the router should have, with its node's SIP URI (Kamailio's view)."""
    cur = await conn.execute("SELECT key_name, key_value FROM router_numbers")
    return {row[0]: row[1] for row in await cur.fetchall()}


async def make_reader(conn: Conn, role: str, password: str) -> None:
    """A login role that may read router_numbers and the nodes it probes
    (router_dispatcher, and the `version` row Kamailio checks its shape by), nothing
    else (Kamailio's); an existing one gets the new password."""
    cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    verb = "ALTER" if await cur.fetchone() else "CREATE"
    await conn.execute(
        sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )
    await conn.execute(
        sql.SQL("GRANT SELECT ON router_numbers, router_dispatcher, version TO {}").format(
            sql.Identifier(role)
        )
    )


async def forget(conn: Conn) -> int:
    """Without a router, nothing is held for it: a table left from when one was
    configured must not keep blocks on their old nodes (db/pbx.py `_HELD`)."""
    cur = await conn.execute("DELETE FROM router_blocks")
    await conn.execute("DELETE FROM router_switching")
    return cur.rowcount


@dataclass(frozen=True)
class Health:
    """What the router last said of a node: up, or marked down by its probes."""

    node: str
    up: bool
    since: datetime


async def record_health(conn: Conn, seen: dict[str, bool], now: datetime) -> list[Health]:
    """Store the router's marks (node -> up); returns the changes. A node seen for the
    first time is a change only when it is down (a platform that starts does not say
    every node is up). Two instances storing the same mark: one of them changes it."""
    changed = []
    for node, up in sorted(seen.items()):
        cur = await conn.execute(
            "INSERT INTO node_health AS h (node, up, since) VALUES (%s, %s, %s)"
            " ON CONFLICT (node) DO UPDATE SET up = EXCLUDED.up, since = EXCLUDED.since"
            " WHERE h.up <> EXCLUDED.up"
            " RETURNING xmax = 0 AS first",
            (node, up, now),
        )
        row = await cur.fetchone()
        if row is not None and not (row[0] and up):
            changed.append(Health(node, up, now))
    return changed


async def health(conn: Conn) -> dict[str, Health]:
    cur = await conn.execute("SELECT node, up, since FROM node_health")
    return {row[0]: Health(row[0], row[1], row[2]) for row in await cur.fetchall()}
