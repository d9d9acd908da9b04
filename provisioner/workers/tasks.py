"""The workers of an instance, started after the app (or alone, `provisioner worker`):
one applier per Asterisk node, the SIP router's sync (with a router), the mail sender,
and housekeeping. Each carries out what the API's transactions wrote to tables, after
they committed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from provisioner.apply.check import check_node, repair_node
from provisioner.apply.pjsip import PjsipReloader
from provisioner.apply.round import Applier
from provisioner.asterisk import realtime
from provisioner.clock import Clock
from provisioner.db import apply_queue, idempotency, outbox, pjsip_rows, rounds
from provisioner.db import events as db_events
from provisioner.db import router as db_router
from provisioner.mail import sender
from provisioner.mail.compose import Composer
from provisioner.render.render import own_files
from provisioner.router.health import HealthWatch
from provisioner.router.sync import RouterSync
from provisioner.service import assignments, failover, usage
from provisioner.service.unit import Actor, Policy, Unit
from provisioner.settings import Node, Settings, Webhook
from provisioner.workers import loop, webhooks

log = logging.getLogger(__name__)

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
        expired = await housekeeping(pool, clock, policy, composer)
        await usage.forget_old(pool, settings.billing, clock())
        return expired

    mail = loop.run("mail", send_mails, idle_seconds=5, url=url, channel=outbox.CHANNEL)
    if settings.router:
        step = _routing(RouterSync(pool, settings.router, settings.asterisk.nodes, clock), url)
    else:
        step = _without_router(pool)
    routing = [asyncio.create_task(step, name="router")]
    if settings.router and settings.router.health_ms > 0:
        watch = HealthWatch(pool, settings.router, settings.asterisk.nodes, clock)

        async def health_step() -> int:
            # The router's marks first, then what they call for: a node down for long
            # enough hands its PBXs to its standby.
            changed = await watch.step()
            return changed + await failover.fail_over(pool, settings, clock)

        health = loop.run("node-health", health_step,
                          idle_seconds=settings.router.health_ms / 1000)  # fmt: skip
        routing.append(asyncio.create_task(_watching(watch, health), name="node-health"))
    chores = loop.run("housekeeping", chores_step, idle_seconds=60)
    return [
        *(t for n in settings.asterisk.nodes for t in node_workers(settings, pool, url, clock, n)),
        asyncio.create_task(mail, name="mail-sender"),
        asyncio.create_task(chores, name="housekeeping"),
        *(webhook_worker(pool, url, clock, i, hook) for i, hook in enumerate(settings.webhooks)),
        *routing,
    ]  # fmt: skip


async def _without_router(pool: AsyncConnectionPool) -> None:
    """No router configured: forget what an earlier one was told, once (retried while
    the database is away), so no block stays held on its old node for it."""
    while True:
        try:
            async with pool.connection() as conn:
                if await db_router.forget(conn):
                    log.warning("no router configured: its table of blocks is cleared")
            return
        except Exception as exc:
            log.warning("could not clear the router's table yet: %s", exc)
            await asyncio.sleep(5)


def webhook_worker(
    pool: AsyncConnectionPool, url: str, clock: Clock, index: int, hook: Webhook
) -> asyncio.Task[None]:
    """One sender per endpoint: a slow or dead endpoint holds up only its own events."""

    async def send_events() -> int:
        return await webhooks.deliver_due(pool, hook, clock)

    name = f"webhooks-{index}"  # not the URL: it may carry a token in its query
    return asyncio.create_task(
        loop.run(name, send_events, idle_seconds=1, url=url, channel=db_events.CHANNEL),
        name=name,
    )


def node_workers(
    settings: Settings, pool: AsyncConnectionPool, url: str, clock: Clock, node: Node
) -> list[asyncio.Task[None]]:
    """The workers of one Asterisk node: its applier (woken by NOTIFY on the apply
    queue), its coalesced PJSIP reloader (woken when a round leaves PJSIP objects
    pending), the check of its PJSIP mode at start, the import of its call records
    (polling its CDR spool), and its drift check on a slow timer."""

    applier = Applier.of(settings, pool, node, clock)

    reloader = PjsipReloader(
        pool, node, clock, min_interval=settings.asterisk.pjsip_reload_ms / 1000
    )
    tasks = [
        asyncio.create_task(
            loop.run(f"apply-{node.name}", applier.round, idle_seconds=2, url=url,
                     channel=apply_queue.CHANNEL),
            name=f"apply-{node.name}",
        ),
        asyncio.create_task(
            loop.run(f"pjsip-{node.name}", reloader.step, idle_seconds=2, url=url,
                     channel=rounds.PJSIP_CHANNEL),
            name=f"pjsip-{node.name}",
        ),
    ]  # fmt: skip
    tasks.append(asyncio.create_task(_pjsip_mode(pool, node, clock), name=f"mode-{node.name}"))
    if node.cdr_file is not None:

        async def import_calls() -> int:
            return await usage.import_step(pool, node, settings.billing, clock())

        tasks.append(
            asyncio.create_task(
                loop.run(f"calls-{node.name}", import_calls,
                         idle_seconds=settings.billing.import_interval_ms / 1000),
                name=f"calls-{node.name}",
            )
        )  # fmt: skip
    if settings.asterisk.drift_check_seconds > 0:
        tasks.append(
            asyncio.create_task(
                _drift_checks(applier, settings.asterisk.drift_check_seconds),
                name=f"drift-{node.name}",
            )
        )
    return tasks


async def _watching(watch: HealthWatch, steps: Coroutine[Any, Any, None]) -> None:
    """The node-health loop; the watch's router clients close with it."""
    try:
        await steps
    finally:
        await watch.close()


async def _routing(sync: RouterSync, url: str) -> None:
    """The router step's loop; the block switches under way end with it."""
    try:
        await loop.run("router", sync.step, idle_seconds=1, url=url, channel=db_router.CHANNEL)
    finally:
        await sync.stop()


async def _pjsip_mode(pool: AsyncConnectionPool, node: Node, clock: Clock) -> None:
    """Once at start (retried while the database is away): a realtime node's own rows
    (the carrier's endpoint and AOR) are written now, and its PBXs that have no rows
    yet (the node was just switched to realtime, or is new) are queued, so their objects
    are there before anybody needs them: without the carrier's endpoint every call the
    router relays would be refused. A files node's rows from when it was realtime go."""
    while True:
        try:
            async with pool.connection() as conn, conn.transaction():
                if not node.realtime:
                    if await pjsip_rows.forget_node(conn, node.name):
                        log.warning("node %s has pjsip: files; its realtime rows are dropped",
                                    node.name)  # fmt: skip
                    return
                own = realtime.objects(own_files(node))
                if await pjsip_rows.replace(conn, node.name, None, own, clock()):
                    log.warning("node %s: its own realtime rows (carrier) written", node.name)
                missing = await pjsip_rows.pbxes_without_rows(conn, node.name)
                for pbx_id in missing:
                    await apply_queue.request(conn, pbx_id, "realtime rows", clock())
                readers = await pjsip_rows.readers(conn, node.name)
            if not readers:
                # Realtime is the default: a node entry written for files before it,
                # without `pjsip`, is a realtime node now, and its Asterisk sees none of
                # the rows. Said at every start, as `provisioner check` says it.
                log.warning(
                    "node %s has pjsip: realtime (the default), but no database role reads"
                    " its rows: make its Asterisk's login with `provisioner pjsip-reader %s"
                    " ROLE`, or set pjsip: files in its entry for a node that reads files",
                    node.name, node.name,
                )  # fmt: skip
            if missing:
                log.warning("node %s: %d PBXs without realtime rows queued", node.name,
                            len(missing))  # fmt: skip
            return
        except Exception as exc:
            log.warning("node %s: PJSIP mode not checked yet: %s", node.name, exc)
            await asyncio.sleep(5)


async def _drift_checks(applier: Applier, every_seconds: int) -> None:
    """Compare database, files and live Asterisk for the whole node now and then, and
    repair what drifted (a hand edit, an object lost by somebody's reload) by a full
    round: the apply rounds themselves only look at what they change."""
    node = applier.node
    while True:
        await asyncio.sleep(every_seconds)
        try:
            drifted, problems = await check_node(applier.pool, node, applier.secrets)
            bad = [d for d in drifted if d.status == "drift"]
            if bad or problems:
                what = "; ".join([*problems, *(d.slug for d in bad)])[:500]
                log.error("node %s drifted (%s); repairing by a full round", node.name, what)
                await repair_node(applier, bad)
        except Exception as exc:  # Asterisk away, database restarting: next time
            log.warning("drift check of node %s failed: %s", node.name, exc)
