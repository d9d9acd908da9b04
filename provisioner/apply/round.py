"""Applying config to one Asterisk node: a round, read as its steps.

One round takes every due job of the node (a burst becomes one round) and:
1. loads the PBXs (frozen `Tenant`s) and renders those with jobs (`Rendered`);
2. writes the files (the truth: engineers read them, and a full reload of them is what
   Asterisk must match), setting hand-edited files aside (`execute`);
3. makes Asterisk match them, incrementally by default: the dialplan by AMI operations
   worked out in `plan` (only the contexts that changed; no module reload), checked by
   reading back just those contexts. PJSIP objects from files only come from a reload
   of res_pjsip, so that part is left to the node's coalesced reloader (`pjsip`), off
   the path of inbound routing; on a realtime node they are rows instead, written and
   expired from Asterisk's cache in the round itself (`realtime`), never reloaded;
4. hands one frozen `Outcome` per PBX to the recorder (`record`).
No step changes what another step made: each returns its own values.

The modes are separate plans: `_incremental`; `_full`, which reloads both modules and
checks every PBX of the node (a reload's "Success" proves nothing: a parse error in one
tenant's file can drop another tenant's objects) and rolls a failing PBX back to its
last good revision; the fallback, a full round after an incremental one found it could
not go on (an operation refused, a read-back that differs, the node's own dialplan
changed); and `_leave`, the departures of PBXs that moved to another node. A full round
runs when asked (`provisioner apply --full`, a drift repair, `asterisk.incremental:
false`) and for a retry after a round failed at Asterisk.

A round's reads and renders cover only the PBXs with jobs (a full round looks at every
PBX's files); hand edits of the others are found by the drift check (`check`), which the
worker also runs on a slow timer.

Secrets: the files on disk carry them (Asterisk needs them); the revisions in the
database carry `<secret>` in their place (render.redact). So what we wrote is compared
with the disk in redacted form, a PBX whose files must be put back is rendered again,
and the real text of each PBX's last good files is kept beside them (files.keep_good).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from provisioner.apply import execute, plan, reads, record
from provisioner.apply.execute import ALL_KINDS, DIALPLAN, MODULES, PJSIP
from provisioner.apply.reads import Rendered
from provisioner.apply.record import Outcome
from provisioner.asterisk import files, realtime
from provisioner.asterisk.ami import Ami, AsteriskUnavailable, OperationFailed
from provisioner.asterisk.parse import NotOurs, dialplan_texts, kind_of, parse_dialplan
from provisioner.clock import Clock
from provisioner.db.apply_queue import Job
from provisioner.db.departures import Leaving
from provisioner.db.pjsip_rows import Fields, Key
from provisioner.db.rounds import Tenant
from provisioner.domain import names
from provisioner.domain.credentials import SecretBox
from provisioner.metrics import APPLY_SECONDS, ROUNDS
from provisioner.render.render import own_files, redacted
from provisioner.settings import Node, Settings

log = logging.getLogger(__name__)

# A round holds its jobs by a lease it renews while it runs; an instance that dies
# (kill -9) loses them to another instance within one lease.
LEASE = timedelta(seconds=15)


class FallBack(Exception):
    """An incremental round cannot go on; a full round takes its jobs."""


@dataclass(frozen=True)
class Written:
    """What writing one part of a PBX's files did."""

    changed: frozenset[str] = frozenset()  # kinds of config changed on disk
    notes: tuple[str, ...] = ()  # hand edits set aside
    broken: str | None = None  # the disk refused: this PBX waits, the others go on


class Applier:
    """The apply of one node. A worker keeps one per node (it remembers what it last
    said of a PBX that cannot leave the node yet, to say it once); the console and the
    drift repair make their own for one round."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        node: Node,
        clock: Clock,
        secrets: SecretBox,
        *,
        retry_seconds: int = 5,
        incremental: bool = True,
    ) -> None:
        self.pool, self.node, self.clock, self.secrets = pool, node, clock, secrets
        self.retry_seconds, self.incremental = retry_seconds, incremental
        self._cannot_leave: dict[int, str] = {}  # PBX id -> the reason last logged
        # The node's own files and the dialplan they hold (its [carrier-in], which every
        # PBX adds to): from the node's settings, so made once, not once a step.
        self.own_files = own_files(node)
        self.shared = frozenset(parse_dialplan(dialplan_texts(self.own_files)))

    @classmethod
    def of(cls, settings: Settings, pool: AsyncConnectionPool, node: Node, clock: Clock) -> Applier:
        """The node's applier as the settings make it: the one way the worker, the
        console and the drift repair get one (a repair that used defaults and the system
        clock once ignored `asterisk.retry_seconds` and the injected clock)."""
        return cls(
            pool, node, clock, settings.secret_box(),
            retry_seconds=settings.asterisk.retry_seconds,
            incremental=settings.asterisk.incremental,
        )  # fmt: skip

    async def round(self, *, limit: int = 500, full: bool = False, wait: bool = False) -> int:
        """One round; returns how many PBX jobs and departures it took (0: nothing due).
        `full`, or a job queued with `full_reload`, reloads both modules even where no
        file changed (a drift repair, a retry after Asterisk failed). `wait`: wait for a
        round another applier is running, instead of leaving the node to it (a repair
        must not return before what it queued is done)."""
        async with reads.node_lock(self.pool, self.node, wait=wait) as mine:
            if not mine:
                return 0  # another instance is applying to this node right now
            left = await self._leave()
            jobs = await reads.claim(self.pool, self.node, self.clock(), LEASE, limit)
            if not jobs and not full:
                return left
            # A full round runs without jobs too: it writes and reloads the node's own
            # files (a repair of the node's drift where no PBX drifted).
            async with record.leased(self.pool, jobs, self.clock, LEASE):
                await self._run(jobs, full=full or any(j.full_reload for j in jobs))
            return len(jobs)

    async def _run(self, jobs: list[Job], *, full: bool) -> None:
        """The round in its mode, then its record; anything that stops it (Asterisk
        away, or the unexpected) puts every job back for a retry by full reload (never
        left for its lease to run out)."""
        started, result = time.monotonic(), "applied"
        try:
            if full or not self.incremental:
                ROUNDS.labels(mode="full").inc()
                outcomes = await self._full(jobs, reload_all=full)
            else:
                try:
                    outcomes = await self._incremental(jobs)
                    ROUNDS.labels(mode="incremental").inc()
                except FallBack as why:
                    log.warning("node %s: incremental apply not possible (%s); reloading fully",
                                self.node.name, why)  # fmt: skip
                    ROUNDS.labels(mode="fallback").inc()
                    outcomes = await self._full(jobs, reload_all=True)
            self._keep_good(outcomes)
            await record.record(self.pool, outcomes, self.clock(), self.retry_seconds)
        except Exception as exc:
            result = "retry"
            if isinstance(exc, AsteriskUnavailable):
                log.warning("node %s unavailable, %d applies wait: %s",
                            self.node.name, len(jobs), exc)  # fmt: skip
            else:
                log.exception("apply round on node %s failed; %d applies wait",
                              self.node.name, len(jobs))  # fmt: skip
            stopped = record.Stopped(jobs, str(exc))
            await record.record(self.pool, stopped, self.clock(), self.retry_seconds)
        APPLY_SECONDS.labels(result=result).observe(time.monotonic() - started)

    # --- Steps every mode uses ---------------------------------------------------------

    async def _render(self, t: Tenant) -> Rendered:
        return await reads.render(self.pool, self.node, self.secrets, t)

    def _write_node_files(self) -> frozenset[str]:
        """The node's own files (carrier endpoint), from the config; kinds changed."""
        changed = set()
        for path, text in self.own_files.items():
            if files.read(self.node.output_dir, path) != text:
                files.write_atomic(self.node.output_dir, path, text, group=self.node.file_group)
                changed.add(kind_of(path))
        return frozenset(changed)

    def _write(
        self,
        t: Tenant,
        wanted: dict[str, str],
        kinds: frozenset[str] = ALL_KINDS,
        notes: tuple[str, ...] = (),
    ) -> Written:
        """Write the PBX's files of these kinds; `notes` travel along in the result."""
        try:
            changed = execute.write_pbx(self.node, t, wanted, kinds)
        except OSError as exc:  # a full or read-only disk: this PBX waits, others go on
            broken = f"cannot write its files: {exc}"
            log.error("PBX %s: %s", t.slug, broken)
            return Written(notes=notes, broken=broken)
        return Written(changed, notes)

    def _write_part(
        self, t: Tenant, wanted: dict[str, str], kinds: frozenset[str], now: datetime
    ) -> Written:
        """One part of an incremental round: its hand edits set aside, then written."""
        edits = execute.set_aside_hand_edits(self.node, t, wanted, now, kinds)
        return self._write(t, wanted, kinds, edits.notes)

    def _keep_good(self, outcomes: list[Outcome]) -> None:
        """The real text of each PBX's files now live, kept beside them (a rollback's
        and a hand edit's repair put it back; the revisions hold it redacted)."""
        for o in outcomes:
            live = not (o.failed or o.pjsip_due) and o.broken is None
            if live and o.on_disk is not None:
                files.keep_good(self.node.output_dir, o.on_disk, o.tenant.good or {},
                                group=self.node.file_group)  # fmt: skip

    # --- The incremental round ----------------------------------------------------------

    async def _incremental(self, jobs: list[Job]) -> list[Outcome]:
        tenants = await reads.with_jobs(self.pool, self.node, jobs)
        rendered = {t: await self._render(t) for t in tenants}
        own = self._write_node_files()
        if "dialplan" in own:
            # [carrier-in]'s own fallbacks changed (the node's config): reload it whole.
            raise FallBack("the node's dialplan file changed")
        if "pjsip" in own and self.node.realtime:
            # The carrier's objects: its endpoint's rows, its identify from the file.
            raise FallBack("the node's pjsip file changed")
        # Each part's file is written before that part goes live: the dialplan file, its
        # AMI operations (now a moved number routes), then the pjsip file for the
        # coalesced reload (on a realtime node: its rows, expired from Asterisk's cache
        # and read back); the read-back of the dialplan comes last.
        now = self.clock()
        dialplan = {
            t: self._write_part(t, r.files, DIALPLAN, now)
            for t, r in rendered.items()
            if r.files is not None and r.broken is None
        }
        ready = {t: rendered[t].files or {} for t, w in dialplan.items() if w.broken is None}
        pjsip = await self._go_live(ready, now)
        outcomes = []
        for t, r in rendered.items():
            d, p = dialplan.get(t, Written()), pjsip.get(t, Written())
            outcomes.append(Outcome(
                t, r.files, notes=d.notes + p.notes, broken=r.broken or d.broken or p.broken,
                pjsip_due=t in pjsip and p.broken is None
                and execute.pjsip_due(self.node, t, r.files or {}),
            ))  # fmt: skip
        return outcomes

    async def _go_live(
        self, ready: dict[Tenant, dict[str, str]], now: datetime
    ) -> dict[Tenant, Written]:
        """Live dialplan from what it was to what the files say (a moved number routes
        once the operations are sent), then the pjsip files, then the read-back.
        Returns what writing each PBX's pjsip file did."""
        try:
            shared = self.shared
            before = parse_dialplan(text for t in ready for text in dialplan_texts(t.live_dialplan))
            after = parse_dialplan(
                text for wanted in ready.values() for text in dialplan_texts(wanted)
            )
            operations = plan.dialplan_operations(before, after, shared)
        except NotOurs as exc:
            raise FallBack(str(exc)) from None
        if not operations and not self.node.realtime:
            return {t: self._write_part(t, wanted, PJSIP, now) for t, wanted in ready.items()}
        async with Ami(self.node) as ami:
            try:
                await execute.run_dialplan(ami, operations)
            except OperationFailed as exc:
                raise FallBack(str(exc)) from None
            written = {t: self._write_part(t, wanted, PJSIP, now) for t, wanted in ready.items()}
            problems = await execute.verify_dialplan(ami, operations, before, after, shared)
            if self.node.realtime:
                live = {t: ready[t] for t, w in written.items() if w.broken is None}
                try:
                    problems += await self._publish(ami, live)
                except OperationFailed as exc:
                    raise FallBack(str(exc)) from None
        if problems:
            raise FallBack("not live as written: " + "; ".join(problems[:5]))
        return written

    # --- Realtime nodes ---------------------------------------------------------------

    async def _store_rows(self, config: dict[Tenant, dict[str, str]]) -> set[Key]:
        """Each PBX's rows made the objects of its pjsip files (one transaction per
        PBX); the keys that changed."""
        objects: dict[int | None, dict[Key, Fields]] = {
            t.pbx_id: realtime.objects(files_) for t, files_ in config.items()
        }
        return await record.store_rows(self.pool, self.node.name, objects, self.clock())

    async def _publish(self, ami: Ami, config: dict[Tenant, dict[str, str]]) -> list[str]:
        """A realtime node's PJSIP part of a round: the rows, then each changed object
        expired from Asterisk's cache and its endpoint read back; a changed outbound
        registration reloads that module alone. What is not live (empty: all is)."""
        changed = await self._store_rows(config)
        wanted = {k: f for files_ in config.values() for k, f in realtime.objects(files_).items()}
        problems = await realtime.make_live(ami, changed, wanted)
        if any(
            realtime.registrations(redacted(files_)) != realtime.registrations(t.good or {})
            for t, files_ in config.items()
        ):
            await execute.reload_module(ami, realtime.REGISTRATIONS)
        return problems

    async def _publish_all(self, ami: Ami, config: dict[Tenant, dict[str, str]]) -> None:
        """A full round on a realtime node: the node's own rows (the carrier's endpoint
        and AOR, from its file) and those of every PBX written; then what a reload would
        have re-read, without leaving the node cold. Each object whose row changed is
        expired, as in an incremental round, and every other cached one marked stale:
        served as it is on its next use and refreshed from its row meanwhile, so an
        expiry that was ever lost heals at once and no REGISTER waits for PostgreSQL
        (an emptied cache answers less than half as many: README, the bench). With
        more changed than REFILL_AT, one expiry of the whole cache is cheaper."""
        own = realtime.objects(self.own_files)
        changed = await record.store_rows(self.pool, self.node.name, {None: own}, self.clock())
        changed |= await self._store_rows(config)
        if len(changed) > realtime.REFILL_AT:
            for kind in realtime.COLUMNS:
                await ami.expire_all_cached(kind)
            return
        for kind, name in sorted(changed):
            await ami.expire_cached(kind, name)
        for kind in realtime.COLUMNS:
            await ami.stale_all_cached(kind)

    # --- The full round ---------------------------------------------------------------

    async def _reload(self, ami: Ami, kinds: set[str], *, own_pjsip: bool) -> None:
        """A full round's reloads. A realtime node never reloads res_pjsip: endpoints,
        AORs and auths are rows (their cache expired or stale); what stays in files is
        reloaded module by module: the tenants' outbound registrations, and the
        carrier's identify when the node's own file changed (`own_pjsip`, or the round
        must reload all)."""
        if self.node.realtime and "pjsip" in kinds:
            kinds = kinds - {"pjsip"}
            await execute.reload_module(ami, realtime.REGISTRATIONS)
            if own_pjsip:
                await execute.reload_module(ami, realtime.IDENTIFY)
        await execute.reload(ami, kinds)

    async def _full(self, jobs: list[Job], *, reload_all: bool) -> list[Outcome]:
        node = self.node
        tenants = await reads.of_node(self.pool, node, jobs)
        # Only PBXs with a job are rendered; the others must stay as last written.
        with_jobs = {t: await self._render(t) if t.job else Rendered() for t in tenants}
        own = self._write_node_files()
        changed = set(own)
        now = self.clock()
        edits = {
            t: execute.set_aside_hand_edits(node, t, r.files, now) for t, r in with_jobs.items()
        }
        # A hand-edited PBX without a job is rendered again and written with the rest.
        rendered = {
            t: await self._render(t)
            if edits[t].rewrite and r.files is None and r.broken is None
            else r
            for t, r in with_jobs.items()
        }
        written = {
            t: self._write(t, r.files)  # (hand edits were set aside above)
            for t, r in rendered.items()
            if r.files is not None and r.broken is None
        }
        for w in written.values():
            changed |= w.changed
        if reload_all:
            changed |= set(MODULES)
        # (A fallback's incremental round may have written the node's file already.)
        own_pjsip = "pjsip" in own or reload_all

        def broken(t: Tenant) -> str | None:
            return rendered[t].broken or written.get(t, Written()).broken

        wanted = {t: rendered[t].files for t in tenants if broken(t) is None}
        notes: dict[Tenant, list[str]] = {t: list(edits[t].notes) for t in tenants}
        attempted: dict[Tenant, dict[str, str]] = {}
        async with Ami(node) as ami:
            if node.realtime:
                await self._publish_all(ami, {t: f for t, f in wanted.items() if f is not None})
            await self._reload(ami, changed, own_pjsip=own_pjsip)
            expect = {t: execute.expected(t, files_) for t, files_ in wanted.items()}
            failing = await execute.verify_node(ami, expect)
            if failing:
                # Put each failing PBX with a job back to what was live, and check again.
                for t, mismatch in failing.items():
                    notes[t].append(mismatch)
                    tried = wanted[t]
                    if tried is None:
                        continue
                    notes[t].append("new config did not come up in Asterisk; rolled back")
                    notes[t] += files.unreadable(node.output_dir, sorted(tried))
                    attempted[t] = tried
                    wanted[t] = execute.restore(node, t, tried)
                if node.realtime:
                    rolled = {t: wanted[t] or {} for t in attempted}
                    await self._publish_all(ami, rolled)
                await self._reload(ami, set(MODULES), own_pjsip=own_pjsip)
                expect = {t: execute.expected(t, files_) for t, files_ in wanted.items()}
                still = await execute.verify_node(ami, expect)
                for t, mismatch in still.items():
                    notes[t] += [mismatch, "still not live after rollback"]
                failing |= still
        return [
            Outcome(
                t,
                wanted.get(t),
                attempted=attempted.get(t),
                notes=tuple(notes[t]),
                failed=t in failing,
                broken=broken(t),
            )
            for t in tenants
        ]

    # --- Departures --------------------------------------------------------------------

    async def _leave(self) -> int:
        """Remove from this node the PBXs that moved away and are live on their new node
        (and, with a SIP router, no longer receive calls here):
        their files, their contexts and [carrier-in] entries (AMI operations), their
        endpoints (a reload of res_pjsip: a move is rare, it is not coalesced). Returns
        how many left; one that cannot yet is tried again on the next pass (every 2 s
        while the node is down: said once in the log, and again when the reason
        changes)."""
        found = await reads.ready_to_leave(self.pool, self.node)
        done = 0
        for gone in found:
            try:
                await self._remove(gone)
            except (AsteriskUnavailable, OperationFailed, NotOurs, OSError) as exc:
                if self._cannot_leave.get(gone.pbx.id) != str(exc):
                    log.warning("PBX %s cannot leave node %s yet: %s",
                                gone.pbx.slug, self.node.name, exc)  # fmt: skip
                self._cannot_leave[gone.pbx.id] = str(exc)
                continue
            self._cannot_leave.pop(gone.pbx.id, None)
            await record.left(self.pool, gone.pbx.id)
            log.info("PBX %s left node %s for %s", gone.pbx.slug, self.node.name, gone.pbx.node)
            done += 1
        return done

    async def _remove(self, gone: Leaving) -> None:
        folder = self.node.output_dir
        for path in gone.files:
            files.remove(folder, path)
        files.keep_good(folder, {}, gone.files)  # its last good copies go too
        shared = self.shared
        before = parse_dialplan(dialplan_texts(gone.files))
        operations = plan.dialplan_operations(before, {}, shared)
        async with Ami(self.node) as ami:
            await execute.run_dialplan(ami, operations)
            problems = await execute.verify_dialplan(ami, operations, before, {}, shared)
            if self.node.realtime:
                rows = await record.store_rows(self.pool, self.node.name, {gone.pbx.id: {}},
                                               self.clock())  # fmt: skip
                problems += await realtime.make_live(ami, rows, {})
                if realtime.registrations(gone.files):
                    await execute.reload_module(ami, realtime.REGISTRATIONS)
            elif any(kind_of(path) == "pjsip" for path in gone.files):
                await execute.reload(ami, {"pjsip"})
            stale = await ami.endpoints_like(names.owned_prefix(gone.pbx.slug))
        if problems or stale:
            raise OperationFailed(f"still live: {problems[:3]}, endpoints {sorted(stale)[:3]}")
