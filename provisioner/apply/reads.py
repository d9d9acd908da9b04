"""Everything a round reads from the database, in one place: its jobs, its PBXs as frozen
`Tenant`s, their files rendered, and the PBXs ready to leave the node. The round's
writes are in `record.py`; between the two the round works on values only.

Each read opens its own short transaction: a round talks to Asterisk for seconds and
must hold no database transaction meanwhile."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from provisioner.db import apply_queue, departures, locks, rounds
from provisioner.db import router as db_router
from provisioner.db.apply_queue import Job
from provisioner.db.departures import Leaving
from provisioner.db.rounds import Tenant
from provisioner.domain.credentials import SecretBox
from provisioner.render.load import files_for_node
from provisioner.settings import Node

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rendered:
    """What a PBX's files should be now (`files`), or why they cannot be (`broken`: it
    waits for a retry, and the node's other PBXs go on without it)."""

    files: dict[str, str] | None = None
    broken: str | None = None


@asynccontextmanager
async def node_lock(pool: AsyncConnectionPool, node: Node, *, wait: bool) -> AsyncIterator[bool]:
    """The node's apply lock: one round at a time per node, across instances (False:
    another holds it and `wait` was not asked)."""
    async with locks.held(pool, locks.node(node.name), wait=wait) as mine:
        yield mine


async def claim(
    pool: AsyncConnectionPool, node: Node, now: datetime, lease: timedelta, limit: int
) -> list[Job]:
    """Every due job of the node, leased to this round."""
    async with pool.connection() as conn, conn.transaction():
        return await apply_queue.claim_jobs(conn, node.name, now, now + lease, limit)


async def with_jobs(pool: AsyncConnectionPool, node: Node, jobs: list[Job]) -> list[Tenant]:
    """The PBXs with jobs, with what is live of them (an incremental round: its reads do
    not grow with the node). One moved away meanwhile is left out: the next round is
    full."""
    by_pbx = {job.pbx_id: job for job in jobs}
    async with pool.connection() as conn:
        found = await rounds.round_pbxes(conn, list(by_pbx))
    return [replace(f, job=by_pbx[f.pbx.id]) for f in found if f.pbx.node == node.name]


async def of_node(pool: AsyncConnectionPool, node: Node, jobs: list[Job]) -> list[Tenant]:
    """Every PBX of the node, with its job where it has one (a full round)."""
    by_pbx = {job.pbx_id: job for job in jobs}
    async with pool.connection() as conn:
        found = await rounds.node_pbxes(conn, node.name)
    return [replace(f, job=by_pbx.get(f.pbx.id)) for f in found]


async def render(pool: AsyncConnectionPool, node: Node, secrets: SecretBox, t: Tenant) -> Rendered:
    """The PBX's files as they should be now; a PBX that cannot be rendered (a value
    config cannot carry, a key that no longer opens its trunk password) is broken with
    the reason, and the round goes on with the others."""
    if t.pbx.removed_at is not None:
        return Rendered(files={})  # removed: its files go, and with them its objects
    try:
        async with pool.connection() as conn, conn.transaction():
            return Rendered(files=await files_for_node(conn, t.pbx, node, secrets))
    except Exception as exc:
        log.exception("PBX %s cannot be rendered", t.slug)
        return Rendered(broken=f"cannot render: {exc}")


async def ready_to_leave(pool: AsyncConnectionPool, node: Node) -> list[Leaving]:
    """The PBXs that moved away and are live on their new node, and to which the SIP
    router sends no number here any more (make before break)."""
    async with pool.connection() as conn:
        found = await departures.leaving(conn, node.name)
        return [g for g in found if not await db_router.routed_to(conn, g.pbx.id, node.name)]
