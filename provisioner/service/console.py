"""The engineers' console use cases (`provisioner apply`, `provisioner check`): what
they do and what their outcome means; cli.py only parses and prints."""

from __future__ import annotations

import asyncio
import time

from psycopg_pool import AsyncConnectionPool

from provisioner.apply import check
from provisioner.apply.check import PbxDrift
from provisioner.apply.pjsip import PjsipReloader
from provisioner.apply.round import Applier
from provisioner.asterisk.ami import AsteriskUnavailable
from provisioner.clock import Clock, system_clock
from provisioner.db import apply_queue, apply_state
from provisioner.db import router as db_router
from provisioner.db.accounts import Pbx
from provisioner.router import check as router_check
from provisioner.service.unit import Unit
from provisioner.settings import Node, Settings
from provisioner.settings import Router as RouterSettings

# How often the console looks whether another instance's round has taken its job.
WAIT_STEP = 0.2


async def queue_apply(u: Unit, pbx: Pbx, *, full: bool = False) -> None:
    """The PBX's job, committed before the console's round: any instance's applier may
    take it the moment it commits, and with `full` that one reloads fully too."""
    await apply_queue.request(u.conn, pbx.id, "provisioner apply", u.now, full_reload=full)


async def apply_now(
    pool: AsyncConnectionPool,
    settings: Settings,
    node: Node,
    pbx: Pbx,
    *,
    full: bool,
    wait_seconds: float = 30,
) -> str:
    """One round on the PBX's node now (its job queued and committed before), its PJSIP
    objects reloaded at once if the round left them pending; what came of it, in a
    line that starts with the apply state ("applied", "failed", ...) or says why the
    change is still queued. Another instance's round holding the node (the service's
    applier is woken by the job's commit and often takes it first) is waited for, up to
    `wait_seconds`: once the job is gone, its outcome is the state that round left."""
    applier = Applier.of(settings, pool, node, system_clock)
    deadline = time.monotonic() + wait_seconds
    while True:
        taken = await applier.round(full=full)
        async with pool.connection() as conn:
            waiting = await apply_queue.waiting_job(conn, pbx.id)
        # Waited for: a due job another instance's round holds. Not: a job that waits
        # for its retry time (its reason is the answer), or the time is up.
        due = waiting is not None and waiting.next_attempt_at <= system_clock()
        if taken or not due or time.monotonic() >= deadline:
            break
        await asyncio.sleep(WAIT_STEP)
    await PjsipReloader(pool, node, system_clock, min_interval=0, settle=0).step()
    async with pool.connection() as conn:
        state = await apply_state.get(conn, pbx.id)
        waiting = await apply_queue.waiting_job(conn, pbx.id)
    if taken == 0 and waiting is not None:
        # The round above took nothing: another instance holds the node, or the job
        # waits for its retry time. Whatever the state says is from before.
        why = waiting.last_error or f"another instance is applying to node {node.name} now"
        return f"not applied yet, the change stays queued: {why}"
    if state is None:
        return "pending"
    return f"{state.state} (revision {state.revision}){': ' + state.error if state.error else ''}"


async def check_node(
    pool: AsyncConnectionPool,
    settings: Settings,
    node: Node,
    *,
    repair: bool = False,
    router: bool = False,
    clock: Clock = system_clock,
) -> tuple[list[PbxDrift], list[str]]:
    """The node's drift check (the console's and the API's); with `repair`, what drifted
    is repaired (a full round) and the node checked again, so what is returned is what
    is left. With `router`, the node's problems include the router's entries that should
    point at this node, or do (a router that cannot be asked is one of them)."""
    secrets = settings.secret_box()
    try:
        pbxes, node_problems = await check.check_node(pool, node, secrets)
    except AsteriskUnavailable as exc:
        # A dead node: what the router knows of it is what the operator needs next.
        marked = await _marked_down(pool) if router and settings.router else {}
        if node.name in marked:
            raise AsteriskUnavailable(f"{exc}; {marked[node.name]}") from None
        raise
    drifted = [d for d in pbxes if not d.ok]
    if repair and (drifted or node_problems):
        await check.repair_node(Applier.of(settings, pool, node, clock), drifted)
        pbxes, node_problems = await check.check_node(pool, node, secrets)
    if router and settings.router:
        for drift in await router_check.check_router(pool, settings.router):
            node_problems = [*node_problems, *drift.problems(node.sip_uri)]
        down = (await _marked_down(pool)).get(node.name)
        if down is not None:
            node_problems = [*node_problems, down]
    return pbxes, node_problems


async def _marked_down(pool: AsyncConnectionPool) -> dict[str, str]:
    """The nodes the router marks down, each with the line that says so."""
    async with pool.connection() as conn:
        marks = await db_router.health(conn)
    return {
        name: f"router: node marked down since {h.since.isoformat()} (no answer to the"
        " router's OPTIONS probes; calls for it are refused)"
        for name, h in marks.items()
        if not h.up
    }


async def check_router(
    pool: AsyncConnectionPool, settings: RouterSettings, *, repair: bool
) -> list[str]:
    """The router's table against ours; with `repair`, put back and checked again."""
    drifts = await router_check.check_router(pool, settings)
    if repair and not all(d.ok for d in drifts):
        for drift in drifts:
            await router_check.repair_router(settings, drift)
        drifts = await router_check.check_router(pool, settings)
    return [line for drift in drifts for line in drift.problems()]
