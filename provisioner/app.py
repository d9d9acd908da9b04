"""The aiohttp application: create_app does no I/O; cleanup contexts open and close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from provisioner.api import keys, middleware
from provisioner.api.confirm import PAGES
from provisioner.api.routes import add_routes
from provisioner.asterisk.apply import apply_node
from provisioner.clock import Clock, system_clock
from provisioner.db import apply_queue, embedded, idempotency, outbox
from provisioner.db.migrate import migrate
from provisioner.db.pool import open_pool
from provisioner.mail import sender
from provisioner.mail.compose import Composer
from provisioner.service import assignments, blocks
from provisioner.service.unit import Actor, Policy, Unit
from provisioner.settings import Node, Settings
from provisioner.web.pages import Pages
from provisioner.workers import loop

log = logging.getLogger(__name__)

# Bodies are a few hundred bytes; 64 KiB leaves room and refuses abuse early.
MAX_BODY = 64 * 1024
# Idempotency records outlive any sane retry window of the portal.
IDEMPOTENCY_TTL = timedelta(hours=24)

DATABASE_URL = web.AppKey("database_url", str)
RUN_WORKERS = web.AppKey("run_workers", bool)


def create_app(
    settings: Settings, *, clock: Clock = system_clock, run_workers: bool = True
) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[
            middleware.request_id,
            middleware.problems,
            middleware.read_body,
            middleware.api_keys,
            middleware.unit_of_work,
        ],
    )
    app[keys.SETTINGS] = settings
    app[keys.CLOCK] = clock
    app[keys.COMPOSER] = Composer()
    app[keys.POLICY] = Policy.from_settings(settings)
    app[PAGES] = Pages()
    app[RUN_WORKERS] = run_workers
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_workers)
    add_routes(app)
    return app


async def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url.value
    url, _server = await asyncio.to_thread(embedded.start, settings.data_dir / "postgres")
    return url


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    url = await database_url(settings)
    pool = await open_pool(url, max_size=settings.database_pool_size)
    try:
        async with pool.connection() as conn:
            await migrate(conn)
        async with pool.connection() as conn, conn.transaction():
            box = app[keys.POLICY].secrets
            if await blocks.seal_trunk_passwords(conn, box, reseal=False):
                log.info("sealed the trunk passwords stored in plain text before")
        app[DATABASE_URL] = url
        app[keys.POOL] = pool
        yield
    finally:
        await pool.close()


async def _workers(app: web.Application) -> AsyncIterator[None]:
    if not app[RUN_WORKERS]:
        yield
        return
    tasks = start_workers(
        app[keys.SETTINGS],
        app[keys.POOL],
        app[DATABASE_URL],
        app[keys.CLOCK],
        app[keys.COMPOSER],
        app[keys.POLICY],
    )
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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
