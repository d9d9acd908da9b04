"""Applying config to one Asterisk node: render, write, reload once, verify, roll back.

One round takes every due job of the node (a burst becomes one round), writes the files
that changed, reloads each module whose files changed once, and then checks over AMI
that what the files define is what is live, for every PBX of the node: a reload's
"Success" proves nothing (a parse error in one tenant's file can drop another tenant's
objects). A PBX whose new config does not come up is put back to its last good revision.
Files changed by hand are set aside (never silently overwritten) and reported.

Secrets: the files on disk carry them (Asterisk needs them); the revisions in the
database carry `<secret>` in their place (render.redact). So what we wrote is compared
with the disk in redacted form, a PBX whose files must be put back is rendered again,
and the real text of each PBX's last good files is kept beside them (files.keep_good)
for rollbacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from provisioner.asterisk import files
from provisioner.asterisk.ami import Ami, AsteriskUnavailable
from provisioner.asterisk.parse import dialplan_in, endpoints_in
from provisioner.clock import Clock
from provisioner.db import Conn
from provisioner.db import config as db_config
from provisioner.db.accounts import Pbx
from provisioner.db.config import Job
from provisioner.domain.credentials import SecretBox
from provisioner.metrics import APPLY_SECONDS, BROKEN, RELOADS
from provisioner.render.render import digest, node_files, pbx_files, redact, redacted
from provisioner.render.view import Carrier
from provisioner.service.pbx import load_view
from provisioner.settings import Node

log = logging.getLogger(__name__)

MODULES = {"pjsip": "res_pjsip.so", "dialplan": "pbx_config.so"}
# A round holds its jobs by a lease it renews while it runs; an instance that dies
# (kill -9) loses them to another instance within one lease.
LEASE = timedelta(seconds=15)
MAX_BACKOFF = timedelta(minutes=5)


def kind_of(path: str) -> str:
    return path.split("/", 1)[0]


@dataclass(eq=False)  # compared by identity: two PBXs are never "equal"
class Tenant:
    """One PBX of the node during a round."""

    pbx: Pbx
    job: Job | None
    wanted: dict[str, str] | None  # what it should be now, on disk (None: not rendered)
    written: dict[str, str]  # what we last wrote (latest revision, redacted)
    good: dict[str, str] | None  # last revision verified live (redacted)
    revision: int | None = None
    attempted: dict[str, str] | None = None  # the config that was rolled back
    problems: list[str] = field(default_factory=list)
    # Why its files could not be rendered or written this round: it waits for a retry,
    # and the node's other PBXs go on without it.
    broken: str | None = None

    @property
    def pbx_id(self) -> int:
        return self.pbx.id

    @property
    def slug(self) -> str:
        return self.pbx.slug

    @property
    def expected(self) -> dict[str, str]:
        """What must be live after this round (redacted: only names are compared)."""
        return redacted(self.wanted) if self.wanted is not None else self.written


async def apply_node(
    pool: AsyncConnectionPool,
    node: Node,
    clock: Clock,
    secrets: SecretBox,
    *,
    retry_seconds: int = 5,
    limit: int = 500,
    full: bool = False,
) -> int:
    """One round for one node; returns how many PBX jobs it took (0: nothing due).
    `full` reloads both modules even where no file changed (a drift repair)."""
    async with pool.connection() as lock_conn:
        await lock_conn.set_autocommit(True)
        if not await db_config.try_node_lock(lock_conn, node.name):
            return 0  # another instance is applying to this node right now
        try:
            async with pool.connection() as conn, conn.transaction():
                now = clock()
                jobs = await db_config.claim_jobs(conn, node.name, now, now + LEASE, limit)
            if not jobs:
                return 0
            started = time.monotonic()
            renewing = asyncio.create_task(_renew_lease(pool, jobs, clock))
            try:
                await _round(pool, node, clock, secrets, jobs, retry_seconds, full)
                result = "applied"
            except Exception as exc:
                # Asterisk away, or anything else that stopped the whole round: every job
                # of it waits for a retry (never for its lease to run out).
                result = "retry"
                if isinstance(exc, AsteriskUnavailable):
                    log.warning("node %s unavailable, %d applies wait: %s",
                                node.name, len(jobs), exc)  # fmt: skip
                else:
                    log.exception("apply round on node %s failed; %d applies wait",
                                  node.name, len(jobs))  # fmt: skip
                async with pool.connection() as conn, conn.transaction():
                    for job in jobs:
                        retry_at = clock() + _backoff(job, retry_seconds)
                        await db_config.retry_job(conn, job, str(exc), retry_at)
                        await db_config.set_apply_state(
                            conn, job.pbx_id, "pending", clock(), error=f"waiting: {exc}"
                        )
            finally:
                renewing.cancel()
                await asyncio.gather(renewing, return_exceptions=True)
            APPLY_SECONDS.labels(result=result).observe(time.monotonic() - started)
            return len(jobs)
        finally:
            await db_config.node_unlock(lock_conn, node.name)


async def _renew_lease(pool: AsyncConnectionPool, jobs: list[Job], clock: Clock) -> None:
    """Keep the round's jobs leased while it runs (a slow reload must not let another
    instance take them); stops with the round."""
    while True:
        await asyncio.sleep(LEASE.total_seconds() / 3)
        try:
            async with pool.connection() as conn:
                await db_config.renew_lease(conn, [j.pbx_id for j in jobs], clock() + LEASE)
        except Exception as exc:  # the round itself will meet the same trouble
            log.warning("could not renew the lease of %d apply jobs: %s", len(jobs), exc)


async def _tenants(conn: Conn, node: Node, secrets: SecretBox, jobs: list[Job]) -> list[Tenant]:
    by_pbx = {job.pbx_id: job for job in jobs}
    tenants = []
    for found in await db_config.node_pbxes(conn, node.name):
        t = Tenant(found.pbx, by_pbx.get(found.pbx.id), None, found.written, found.good,
                   found.latest)  # fmt: skip
        # Only PBXs with a job are rendered; the others must stay as last written.
        if t.job is not None:
            await _render(conn, node, secrets, t)
        tenants.append(t)
    return tenants


async def _render(conn: Conn, node: Node, secrets: SecretBox, t: Tenant) -> None:
    """The PBX's files as they should be now; a PBX that cannot be rendered (a value
    config cannot carry, a key that no longer opens its trunk password) is marked
    broken with the reason, and the round goes on with the others."""
    try:
        async with conn.transaction():  # a failed query must not end the round's
            view = await load_view(conn, t.pbx, secrets)
        t.wanted = pbx_files(view, Carrier.of(node))
    except Exception as exc:
        t.broken = f"cannot render: {exc}"
        log.exception("PBX %s cannot be rendered", t.slug)


async def _round(
    pool: AsyncConnectionPool,
    node: Node,
    clock: Clock,
    secrets: SecretBox,
    jobs: list[Job],
    retry_seconds: int,
    full: bool,
) -> None:
    folder = node.output_dir
    async with pool.connection() as conn, conn.transaction():
        tenants = await _tenants(conn, node, secrets, jobs)
    changed: set[str] = set()

    # 1. The node's own files (carrier endpoint), from the config.
    for path, text in node_files(Carrier.of(node)).items():
        if files.read(folder, path) != text:
            files.write_atomic(folder, path, text, group=node.file_group)
            changed.add(kind_of(path))

    # 2. Hand edits, in any PBX's files of this node: set aside; the PBX is rendered
    # again and its files written in step 3.
    now = clock()
    for t in tenants:
        ours = t.expected
        for path, text in t.written.items():
            on_disk = files.read(folder, path)
            # What we render now is ours too: a crash after writing, before the
            # revision was committed, leaves exactly that on disk.
            if on_disk is not None and redact(on_disk) in (text, ours.get(path)):
                continue
            if on_disk is not None:
                kept = files.set_aside(folder, path, now)
                t.problems.append(f"{path} was changed by hand; set aside as {kept}")
                log.error("PBX %s: %s changed by hand, set aside as %s", t.slug, path, kept)
            if t.wanted is None and t.broken is None:
                async with pool.connection() as conn:
                    await _render(conn, node, secrets, t)

    # 3. New config of the PBXs rendered in this round.
    for t in tenants:
        if t.wanted is None or t.broken is not None:
            continue
        try:
            changed |= _write(node, t)
        except OSError as exc:  # a full or read-only disk: this PBX waits, others go on
            t.broken = f"cannot write its files: {exc}"
            log.error("PBX %s: %s", t.slug, t.broken)

    if full:
        changed |= set(MODULES)
    async with Ami(node) as ami:
        await _reload(ami, changed)
        failing = await _verify(ami, tenants)
        if failing:
            # Put each failing PBX with a job back to what was live, and check again.
            for t in failing:
                if t.wanted is None:
                    continue
                t.problems.append("new config did not come up in Asterisk; rolled back")
                _restore(node, t)
            await _reload(ami, {"pjsip", "dialplan"})
            still = await _verify(ami, tenants)
            for t in still:
                t.problems.append("still not live after rollback")
            failing = list({id(t): t for t in failing + still}.values())

    for t in tenants:
        if t.wanted is not None and t.broken is None and t not in failing:
            files.keep_good(folder, t.wanted, t.good or {}, group=node.file_group)

    async with pool.connection() as conn, conn.transaction():
        now = clock()
        for t in tenants:
            if t.broken is not None:
                await _record_broken(conn, t, now, retry_seconds)
                continue
            broken = t in failing
            if t.wanted is not None:
                shown = redacted(t.wanted)
                if t.attempted is not None and redacted(t.attempted) != t.written:
                    # Keep what was tried, for diffs; then what is on disk again.
                    tried = redacted(t.attempted)
                    revision = await db_config.add_revision(
                        conn, t.pbx_id, digest(tried), tried, now
                    )
                    t.revision = revision.revision
                    t.written = tried
                if shown != t.written:
                    rev = await db_config.add_revision(conn, t.pbx_id, digest(shown), shown, now)
                    t.revision = t.revision if broken else rev.revision
                # A repaired hand edit ends applied too, with the note of what was set aside.
                if broken:
                    await db_config.set_apply_state(
                        conn, t.pbx_id, "failed", now, revision=t.revision,
                        error="; ".join(t.problems),
                    )  # fmt: skip
                else:
                    await db_config.set_apply_state(
                        conn, t.pbx_id, "applied", now, revision=t.revision,
                        good_revision=t.revision, error="; ".join(t.problems) or None,
                    )  # fmt: skip
                if t.job is not None:
                    await db_config.finish_job(conn, t.job)
            elif t.problems or broken:
                await db_config.set_apply_state(
                    conn, t.pbx_id, "failed", now, error="; ".join(t.problems or ["not live"])
                )


async def _record_broken(conn: Conn, t: Tenant, now: datetime, retry_seconds: int) -> None:
    """Failed with the reason; its job waits (backoff) for a retry or a newer change."""
    assert t.broken is not None
    BROKEN.inc()
    await db_config.set_apply_state(conn, t.pbx_id, "failed", now, error=t.broken[:1000])
    if t.job is not None:
        await db_config.retry_job(conn, t.job, t.broken, now + _backoff(t.job, retry_seconds))


def _backoff(job: Job, first_seconds: int) -> timedelta:
    return min(timedelta(seconds=first_seconds * 2 ** min(job.attempts, 10)), MAX_BACKOFF)


def _write(node: Node, t: Tenant) -> set[str]:
    """Write the PBX's rendered files; the kinds of config that changed."""
    assert t.wanted is not None
    folder, changed = node.output_dir, set()
    for path in set(t.written) - set(t.wanted):
        files.remove(folder, path)
        changed.add(kind_of(path))
    for path, text in t.wanted.items():
        if files.read(folder, path) != text:
            files.write_atomic(folder, path, text, group=node.file_group)
            changed.add(kind_of(path))
        if t.good is None or t.good.get(path) != redact(text):
            changed.add(kind_of(path))  # written earlier but never seen live
    return changed


async def _reload(ami: Ami, kinds: set[str]) -> None:
    for kind in sorted(kinds):
        module = MODULES[kind]
        try:
            await ami.reload(module)
        except AsteriskUnavailable:
            RELOADS.labels(module=module, result="error").inc()
            raise
        RELOADS.labels(module=module, result="ok").inc()


async def _verify(ami: Ami, tenants: list[Tenant]) -> list[Tenant]:
    """The tenants whose config is not what Asterisk has live."""
    live = await ami.endpoints()
    contexts = await ami.contexts()
    failing = []
    for t in tenants:
        if t.broken is not None:
            continue  # recorded as broken; what is live of it is whatever was before
        config = t.expected
        expected = endpoints_in(config)
        missing = expected - live
        stale = {e for e in live if e.startswith(f"{t.slug}-")} - expected
        absent = set(dialplan_in(config)) - set(contexts)
        if missing or stale or absent:
            t.problems.append(
                f"live mismatch: missing endpoints {sorted(missing)[:5]},"
                f" stale endpoints {sorted(stale)[:5]}, missing contexts {sorted(absent)[:5]}"
            )
            failing.append(t)
    return failing


def _restore(node: Node, t: Tenant) -> None:
    """Put the PBX's last good files back (none: remove its files)."""
    assert t.wanted is not None
    folder = node.output_dir
    t.attempted = dict(t.wanted)
    good = {path: files.read_good(folder, path) for path in t.good or {}}
    for path in set(t.wanted) - set(good):
        files.remove(folder, path)
    restored = {}
    for path, text in good.items():
        if text is None:  # its copy is lost: better nothing than a broken file
            files.remove(folder, path)
        else:
            files.write_atomic(folder, path, text, group=node.file_group)
            restored[path] = text
    t.wanted = restored
