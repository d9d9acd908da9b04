"""Usage per owner account: the import of each node's call records, and what an
account sees of them (GET /v1/accounts/{c}/usage and .../calls)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool

from provisioner.asterisk import cdr
from provisioner.db import calls as db_calls
from provisioner.db import events
from provisioner.domain.errors import InvalidInput
from provisioner.domain.events import CallEnded
from provisioner.domain.usage import BadRecord, CallRecord, parse_line
from provisioner.service.accounts import require
from provisioner.service.unit import Unit
from provisioner.settings import Billing, Node

log = logging.getLogger(__name__)

IMPORTED = Counter(
    "provisioner_call_records_imported", "Call records imported from the nodes' spools", ["node"]
)
REJECTED = Counter(
    "provisioner_call_records_rejected",
    "Spool lines that were no call record of ours (logged, skipped)",
    ["node"],
)
# A period asked for is at most this long: a year and a day of records in one answer.
LONGEST = timedelta(days=367)


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def call_ended(node: str, r: CallRecord) -> CallEnded:
    return CallEnded(
        node=node, uniqueid=r.uniqueid, linkedid=r.linkedid,
        started_at=str(_when(r.started_at)), answered_at=_when(r.answered_at),
        ended_at=str(_when(r.ended_at)), duration=r.duration, billsec=r.billsec,
        disposition=r.disposition, direction=r.direction, number=r.number, peer=r.peer,
        owner=r.owner, pbx=r.pbx, block_id=r.block_id,
    )  # fmt: skip


async def import_step(
    pool: AsyncConnectionPool, node: Node, billing: Billing, now: datetime
) -> int:
    """One batch of the node's spool into the database: the records and the new offset
    in one transaction, so a crash or a database outage anywhere re-reads from the last
    stored offset, and what was stored already is skipped. Returns the lines read."""
    assert node.cdr_file is not None
    async with pool.connection() as conn, conn.transaction():
        at = await db_calls.spool_position(conn, node.name, now)
        chunk = await asyncio.to_thread(
            cdr.read, node.cdr_file, cdr.Spool(at.inode, at.head), at.byte_offset
        )
        if chunk is None or (chunk.end == at.byte_offset and chunk.spool == (at.inode, at.head)):
            return 0
        records = []
        for line in chunk.lines:
            try:
                records.append(parse_line(line))
            except BadRecord as exc:
                REJECTED.labels(node.name).inc()
                log.warning("node %s: a spool line is no call record (%s): %r", node.name,
                            exc, line[:200])  # fmt: skip
        new = await db_calls.insert(conn, node.name, records, now)
        if billing.call_events:
            for record in new:
                await events.emit(conn, "call.ended", call_ended(node.name, record), now)
        await db_calls.move_spool(
            conn, node.name, chunk.spool.inode, chunk.spool.head, chunk.end, now
        )
    IMPORTED.labels(node.name).inc(len(new))
    return len(chunk.lines)


async def restart_import(pool: AsyncConnectionPool, node: Node, now: datetime) -> None:
    """The node's spool is read from its start again (a re-import: what is stored
    already is skipped)."""
    async with pool.connection() as conn:
        await db_calls.restart_spool(conn, node.name, now)


async def forget_old(pool: AsyncConnectionPool, billing: Billing, now: datetime) -> int:
    """Retention: records of calls that started more than retention_days ago go, in
    batches (the housekeeping worker runs it every minute)."""
    if billing.retention_days == 0:
        return 0
    async with pool.connection() as conn:
        return await db_calls.forget_before(conn, now - timedelta(days=billing.retention_days))


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime

    @classmethod
    def of(cls, start: datetime | None, end: datetime | None, now: datetime) -> Period:
        """From/to as asked; by default the calendar month so far (UTC)."""
        end = end or now
        start = start or end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        if start >= end:
            raise InvalidInput("from must be before to", field="from")
        if end - start > LONGEST:
            raise InvalidInput("a period is at most 367 days", field="from")
        return cls(start, end)


async def usage(u: Unit, customer: str, period: Period) -> list[db_calls.UsageRow]:
    """The account's usage: its blocks' calls (by whichever PBX) and its PBX's calls
    (over whichever block), per block, owner, using PBX and direction."""
    u.actor.require_one_of(customer)
    await require(u, customer)
    return await db_calls.usage(u.conn, customer, period.start, period.end)


async def call_list(
    u: Unit, customer: str, period: Period, after: int, limit: int
) -> list[db_calls.Call]:
    u.actor.require_one_of(customer)
    await require(u, customer)
    return await db_calls.calls(u.conn, customer, period.start, period.end, after, limit)
