"""The aiohttp application: create_app does no I/O; cleanup contexts open and close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from provisioner.api import auth, keys, middleware, serving, unit_of_work
from provisioner.api.confirm import PAGES
from provisioner.api.routes import add_routes
from provisioner.clock import Clock, system_clock
from provisioner.db import embedded
from provisioner.db import events as db_events
from provisioner.db.migrate import migrate
from provisioner.db.pool import open_pool
from provisioner.mail.compose import Composer
from provisioner.service import blocks
from provisioner.service.unit import Policy
from provisioner.settings import Settings
from provisioner.web.pages import Pages
from provisioner.workers.tasks import start_workers

log = logging.getLogger(__name__)

DATABASE_URL = web.AppKey("database_url", str)
RUN_WORKERS = web.AppKey("run_workers", bool)


def create_app(
    settings: Settings, *, clock: Clock = system_clock, run_workers: bool = True
) -> web.Application:
    serving.quiet_client_errors()
    app = web.Application(
        client_max_size=middleware.MAX_BODY,
        middlewares=[
            middleware.request_id,
            middleware.problems,
            middleware.read_body,
            auth.api_keys,
            unit_of_work.unit_of_work,
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
    url, _server = await _database_and_server(settings)
    return url


async def _database_and_server(settings: Settings) -> tuple[str, Any]:
    """The configured database's URL, or the embedded one's and its server handle."""
    if settings.database.url:
        return settings.database.url.value, None
    return await asyncio.to_thread(embedded.start, settings.data_dir / "postgres")


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    url, server = await _database_and_server(settings)
    try:
        pool = await open_pool(url, max_size=settings.database.pool_size)
        try:
            async with pool.connection() as conn:
                await migrate(conn)
            async with pool.connection() as conn, conn.transaction():
                box = app[keys.POLICY].secrets
                if await blocks.seal_trunk_passwords(conn, box, reseal=False):
                    log.info("sealed the trunk passwords stored in plain text before")
                # Before any request: a webhook endpoint gets every event from its first
                # start.
                for hook in settings.webhooks:
                    await db_events.cursor(conn, hook.url, app[keys.CLOCK]())
            app[DATABASE_URL] = url
            app[keys.POOL] = pool
            yield
        finally:
            await pool.close()
    finally:
        if server is not None:
            # The embedded PostgreSQL stops with the app, and is gone when this returns
            # (pg_ctl -w stop), not in an atexit handler: pg_ctl makes the postmaster a
            # session leader, so a terminal's Ctrl-C never reaches it, and a second signal
            # (`make run` sends TERM after the Ctrl-C) could end this process before its
            # atexit handlers ran, leaving PostgreSQL behind.
            await asyncio.to_thread(server.cleanup)


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
