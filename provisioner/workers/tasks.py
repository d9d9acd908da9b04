"""The workers of an instance, started after the app (or alone, `provisioner worker`):
one applier per Asterisk node, the mail sender, and housekeeping. Each carries out
what the API's transactions wrote to tables, after they committed."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from psycopg_pool import AsyncConnectionPool

from provisioner.asterisk.apply import apply_node
from provisioner.clock import Clock
from provisioner.db import apply_queue, idempotency, outbox
from provisioner.mail import sender
from provisioner.mail.compose import Composer
from provisioner.service import assignments
from provisioner.service.unit import Actor, Policy, Unit
from provisioner.settings import Node, Settings
from provisioner.workers import loop

# Idempotency records outlive any sane retry window of the portal.
IDEMPOTENCY_TTL = timedelta(hours=24)


async def housekeeping(
    pool: AsyncConnectionPool, clock: Clock, policy: Policy, composer: Composer
) -> int:
    """Expire pending assignments past their window (with notice mails) and forget old
    idempotency keys; returns how many assignments expired."""
    async with pool.connection() as conn, conn.transaction():
        now = clock()
        unit = Unit(conn, now, Actor("system"), policy, composer)
        expired = await assignments.expire_due(unit)
        await idempotency.forget_before(conn, now - IDEMPOTENCY_TTL)
    return expired


def start_workers(
    settings: Settings,
    pool: AsyncConnectionPool,
    url: str,
    clock: Clock,
    composer: Composer,
    policy: Policy,
) -> list[asyncio.Task[None]]:
    transport = sender.transport_for(settings.smtp, settings.data_dir)

    async def send_mails() -> int:
        return await sender.send_due(pool, transport, settings.smtp.sender, clock)

    async def chores_step() -> int:
        return await housekeeping(pool, clock, policy, composer)

    mail = loop.run("mail", send_mails, idle_seconds=5, url=url, channel=outbox.CHANNEL)
    chores = loop.run("housekeeping", chores_step, idle_seconds=60)
    return [
        *(apply_worker(settings, pool, url, clock, node) for node in settings.nodes),
        asyncio.create_task(mail, name="mail-sender"),
        asyncio.create_task(chores, name="housekeeping"),
    ]


def apply_worker(
    settings: Settings, pool: AsyncConnectionPool, url: str, clock: Clock, node: Node
) -> asyncio.Task[None]:
    """The applier of one Asterisk node; woken by NOTIFY on the apply queue."""
    secrets = settings.secret_box()

    async def step() -> int:
        return await apply_node(
            pool, node, clock, secrets, retry_seconds=settings.apply_retry_seconds
        )

    return asyncio.create_task(
        loop.run(f"apply-{node.name}", step, idle_seconds=2, url=url, channel=apply_queue.CHANNEL),
        name=f"apply-{node.name}",
    )
