"""Failover: a node the SIP router has found down for longer than
`asterisk.failover_seconds` hands its PBXs to its standby (`asterisk.nodes[].standby`).

Each PBX moves as an operator's move does (service/accounts.py): its home becomes the
standby, an apply job is queued there, the router step switches its numbers once they
are live on the standby, and the dead node removes what it had of them when it is back
(make before break: nothing is removed from a node the router still sends calls to).
One event, node.failover, names the PBXs that moved.

Nothing flaps: a node that comes back keeps none of them, and no PBX goes back by
itself. An operator moves each back (PUT /v1/accounts/{c}/pbx with its node) when the
node has proven itself, which is a decision about the hardware, not one the service
should guess. A standby that is itself marked down takes nothing; a PBX still moving
(from an earlier move) is left where it is, and said so in the log."""

from __future__ import annotations

import logging
from datetime import timedelta

from psycopg_pool import AsyncConnectionPool

from provisioner.clock import Clock
from provisioner.db import accounts as db_accounts
from provisioner.db import apply_queue, events
from provisioner.db import router as db_router
from provisioner.domain.events import NodeFailover
from provisioner.settings import Settings

log = logging.getLogger(__name__)


async def fail_over(pool: AsyncConnectionPool, settings: Settings, clock: Clock) -> int:
    """Move the PBXs of every node down for long enough to its standby; returns how
    many moved."""
    standbys = {n.name: n.standby for n in settings.asterisk.nodes if n.standby}
    if not standbys:
        return 0
    after = timedelta(seconds=settings.asterisk.failover_seconds)
    now = clock()
    moved = 0
    async with pool.connection() as conn, conn.transaction():
        marks = await db_router.health(conn)
        for node, standby in standbys.items():
            down = marks.get(node)
            if down is None or down.up or now - down.since < after:
                continue
            if not marks.get(standby, down).up:
                continue  # the standby is not known to be up: nothing moves
            customers = []
            for pbx in await db_accounts.pbxes_on(conn, node):
                if pbx.leaving_node is not None:
                    log.warning("failover: PBX %s is still moving from %s; it stays on %s",
                                pbx.slug, pbx.leaving_node, node)  # fmt: skip
                    continue
                await db_accounts.move_pbx(conn, pbx.id, standby)
                await apply_queue.request(conn, pbx.id, f"failover from node {node}", now)
                customers.append(pbx.customer)
            if customers:
                payload = NodeFailover(node=node, standby=standby, customers=customers,
                                       down_since=down.since.isoformat())  # fmt: skip
                await events.emit(conn, "node.failover", payload, now)
                log.error("failover: node %s down since %s; %d PBXs now on %s",
                          node, down.since.isoformat(), len(customers), standby)  # fmt: skip
            moved += len(customers)
    return moved
