"""A realtime node (`pjsip: realtime`) against the real Asterisk: phones and trunks change
without a reload of res_pjsip, so nobody's call waits for anybody's change; and its
objects come back from PostgreSQL after Asterisk restarts, and after PostgreSQL does.

(Every call scenario of tests/test_calls.py runs on a realtime node as well.)
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgserver
import psycopg
import pytest
from fixtures_lab import REALTIME_PASSWORD, REALTIME_ROLE, Lab, ami_of, running_lab
from fixtures_service import Api
from lab_helpers import (
    console,
    lab_command,
    lab_service,
    lab_up_again,
    point_at_database,
    until_channel,
    wait_applied,
)
from ports import free_port
from sipp_peer import SipResult, run_scenario, start_scenario
from waiting import wait_for, wait_until

from provisioner.db import embedded, pjsip_rows
from provisioner.db.migrate import migrate
from provisioner.settings import Settings


@dataclass(frozen=True)
class Phone:
    customer: str
    ext: str
    username: str
    password: str
    port: int


async def small_pbx(api: Api, i: int, extensions: tuple[str, ...] = ("100",)) -> list[Phone]:
    """Account K9000<i> with a PBX, a Berlin block b<i> of ten numbers and these phones."""
    customer = f"K9000{i:02d}"
    await api.ok(
        "PUT",
        f"/v1/accounts/{customer}",
        {"name": f"Firma {i}", "email": f"it{i}@firma.example", "language": "de"},
    )
    await api.ok("PUT", f"/v1/accounts/{customer}/pbx")
    await api.ok("PUT", f"/v1/accounts/{customer}/blocks/b{i:02d}",
                 {"number": f"+4930555{i:02d}", "range": "0-9", "mode": "pbx"})  # fmt: skip
    return [await put_phone(api, customer, ext, f"Telefon {ext}") for ext in extensions]


async def put_phone(api: Api, customer: str, ext: str, name: str) -> Phone:
    body = {"name": name, "site_block": f"b{customer[-2:]}"}
    made = await api.ok("PUT", f"/v1/accounts/{customer}/pbx/extensions/{ext}", body)
    return Phone(customer, ext, made["sip_username"], made["sip_password"], free_port())


async def revision(api: Api, customer: str) -> int:
    state = await api.ok("GET", f"/v1/accounts/{customer}/pbx/config")
    return int(state["revision"] or 0)


async def until_applied(
    api: Api, customer: str, after: int = -1, timeout: float = 20
) -> dict[str, Any]:
    """Until the PBX has a revision newer than `after` and it is applied (no settling,
    so the next change can follow at once: `after` tells this change from the last)."""

    async def applied() -> dict[str, Any] | None:
        state: dict[str, Any] = await api.ok("GET", f"/v1/accounts/{customer}/pbx/config")
        done = state["apply_state"] == "applied" and state["applied_revision"] == state["revision"]
        return state if done and (state["revision"] or 0) > after else None

    return await wait_until(applied, f"{customer} not applied", timeout)


def register(lab: Lab, phone: Phone) -> SipResult:
    return run_scenario(
        "register", remote_port=lab.sip_port, service=phone.username, username=phone.username,
        password=phone.password, local_port=phone.port, variables={"expires": "300"},
    )  # fmt: skip


async def answered_call(lab: Lab, caller: Phone, callee: Phone) -> None:
    """The caller (registered) dials the callee's extension, which answers."""
    answering = start_scenario("uas_answer", remote_port=lab.sip_port, local_port=callee.port)
    call = await asyncio.to_thread(
        run_scenario, "call", remote_port=lab.sip_port, service=caller.username,
        username=caller.username, password=caller.password, local_port=caller.port,
        variables={"dial": callee.ext},
    )  # fmt: skip
    assert call.ok, call.evidence()
    answered = await asyncio.to_thread(answering.wait)
    assert answered.ok, answered.evidence()


def asterisk_reloads_of_pjsip(lab: Lab) -> int:
    """Reloads of res_pjsip in Asterisk's own log: each one logs that its `system`
    object cannot be reloaded (a NOTICE, the lab's log level; a reload of outbound
    registrations alone does not)."""
    log = (lab.folder / "log" / "messages.log").read_text(errors="replace")
    return log.count("Type 'system' is not reloadable")


async def pjsip_reloads(api: Api) -> float:
    text = await (await api.call("GET", "/metrics", key="")).text()
    found = re.search(
        r'^provisioner_reloads_total\{module="res_pjsip.so",result="ok"\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


async def test_a_hundred_changes_reload_nothing_and_a_call_in_progress_goes_on(
    settings: Settings, clean_realtime_lab: Lab
) -> None:
    lab = clean_realtime_lab
    async with lab_service(settings, lab) as (api, _node):
        caller, callee = await small_pbx(api, 0, ("100", "101"))
        others = [(await small_pbx(api, i))[0] for i in range(1, 11)]
        for customer in ["K900000", *(p.customer for p in others)]:
            await wait_applied(api, customer)
        assert register(lab, caller).ok and register(lab, callee).ok
        answering = start_scenario("uas_answer", remote_port=lab.sip_port,
                                   local_port=callee.port, timeout=120)  # fmt: skip
        calling = asyncio.create_task(asyncio.to_thread(
            run_scenario, "call_until_bye", remote_port=lab.sip_port, service=caller.username,
            username=caller.username, password=caller.password, local_port=caller.port,
            variables={"dial": "101"}, timeout=120,
        ))  # fmt: skip
        try:
            await until_channel(lab, f"PJSIP/{callee.username}-", "Up")
            await hundred_changes(api, lab, others)
            # The call in the other PBX is still up after them.
            await until_channel(lab, f"PJSIP/{callee.username}-", "Up", timeout=1)
        finally:  # the call ends as calls end (or, on a failure, the peers stop now)
            async with ami_of(lab) as ami:
                channel = f"/^PJSIP/{caller.username}-/"
                await ami.send_action({"Action": "Hangup", "Channel": channel})
        call = await calling
        answered = await asyncio.to_thread(answering.wait)
        assert call.ok, call.evidence()
        assert answered.ok, answered.evidence()


async def hundred_changes(api: Api, lab: Lab, others: list[Phone]) -> None:
    """100 changes across 10 PBXs, each applied before the next: a phone's name (its
    endpoint's caller ID), and every tenth change a new phone. No reload of res_pjsip,
    by our metrics and by Asterisk's log; each change live."""
    reloads, logged = await pjsip_reloads(api), asterisk_reloads_of_pjsip(lab)
    assert logged > 0  # the log does show them: the clean lab's own reload is there
    started = time.monotonic()
    for n in range(100):
        phone = others[n % 10]
        ext, name = (f"1{n:02d}", f"Neu {n}") if n % 10 == 9 else ("100", f"Name {n}")
        before = await revision(api, phone.customer)
        await api.ok("PUT", f"/v1/accounts/{phone.customer}/pbx/extensions/{ext}",
                     {"name": name, "site_block": f"b{phone.customer[-2:]}"})  # fmt: skip
        await until_applied(api, phone.customer, before)
    took = time.monotonic() - started
    assert await pjsip_reloads(api) == reloads
    assert asterisk_reloads_of_pjsip(lab) == logged
    # Each change is live: the endpoints show their last names (expired from the cache,
    # read again from PostgreSQL).
    for n in range(90, 99):
        shown = await asyncio.to_thread(lab.cli, f"pjsip show endpoint {others[n % 10].username}")
        assert f'"Name {n}" <100>' in shown, shown
    assert took < 60, f"100 changes took {took:.1f} s"


async def test_a_phone_added_to_a_realtime_node_registers_within_a_second(
    settings: Settings, clean_realtime_lab: Lab
) -> None:
    lab = clean_realtime_lab
    async with lab_service(settings, lab) as (api, _node):
        await small_pbx(api, 0)
        await wait_applied(api, "K900000")
        for ext in ("102", "103", "104"):
            phone = await put_phone(api, "K900000", ext, f"Telefon {ext}")
            put_at, attempts = time.monotonic(), []
            while time.monotonic() - put_at < 1.0:
                attempts.append(await asyncio.to_thread(register, lab, phone))
                if attempts[-1].ok:
                    break
            assert attempts[-1].ok, attempts[-1].evidence()
            assert time.monotonic() - put_at <= 1.0, f"{ext}: {len(attempts)} attempts"


async def test_a_restarted_asterisk_has_every_object_back_from_postgresql(
    settings: Settings, clean_realtime_lab: Lab, db_url: str
) -> None:
    lab = clean_realtime_lab
    async with lab_service(settings, lab) as (api, _node):
        caller, callee = await small_pbx(api, 0, ("100", "101"))
        await wait_applied(api, "K900000")
    # The service is gone: whatever works after the restart needs no apply.
    down = await asyncio.to_thread(lab_command, lab, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    await lab_up_again(lab)
    await asyncio.to_thread(point_at_database, lab, db_url)  # (the lab's own test database)
    assert register(lab, caller).ok and register(lab, callee).ok
    await answered_call(lab, caller, callee)


@pytest.fixture
async def own_realtime() -> AsyncIterator[tuple[str, Path, Lab]]:
    """A PostgreSQL of this test's own and a realtime lab reading from it, so that
    restarting PostgreSQL disturbs no other test."""
    folder = Path(tempfile.mkdtemp(prefix="prov-pgrt-", dir="/tmp")) / "pg"
    url, server = await asyncio.to_thread(embedded.start, folder)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
        await pjsip_rows.make_reader(conn, REALTIME_ROLE, REALTIME_PASSWORD, "default")
        await conn.commit()
    info = psycopg.conninfo.conninfo_to_dict(url)
    reader = psycopg.conninfo.make_conninfo(
        "", **{**info, "user": REALTIME_ROLE, "password": REALTIME_PASSWORD}
    )
    try:
        with running_lab("prov-labpg-", reader) as lab:
            yield url, folder, lab
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.mark.slow  # restarts PostgreSQL
async def test_postgresql_restarted_cached_phones_call_on_and_new_ones_work_when_back(
    settings: Settings, own_realtime: tuple[str, Path, Lab]
) -> None:
    from dataclasses import replace

    from provisioner.settings import Database, Secret

    url, folder, lab = own_realtime
    settings = replace(settings, database=Database(url=Secret(url)))
    async with lab_service(settings, lab) as (api, _node):
        caller, callee, late = await small_pbx(api, 0, ("100", "101", "102"))
        await wait_applied(api, "K900000")
    assert register(lab, caller).ok and register(lab, callee).ok  # now in the cache
    # The apply's read-back left every object of the PBX in the cache; 102 stands for
    # an object nobody looked up since Asterisk started.
    for kind in ("endpoint", "aor", "auth"):
        lab.cli(f"sorcery memory cache expire res_pjsip/{kind} {late.username}")

    running = pgserver.get_server(folder, cleanup_mode=None)  # type: ignore[attr-defined]
    await asyncio.to_thread(running.cleanup)  # PostgreSQL stops
    try:
        await answered_call(lab, caller, callee)
        assert not register(lab, late).ok  # not in the cache, and the database is away
    finally:
        await asyncio.to_thread(embedded.start, folder)  # and is back
    await wait_for(lambda: register(lab, late), lambda sip: sip.ok,
                   "the phone never registered again", 15, 0.5, SipResult.evidence)  # fmt: skip


async def test_a_row_changed_by_hand_is_drift_and_the_repair_puts_it_back(
    settings: Settings, clean_realtime_lab: Lab, db_url: str
) -> None:
    from fixtures_service import ENGINEER_KEY

    lab = clean_realtime_lab
    async with lab_service(settings, lab) as (api, node):
        phone, _ = await small_pbx(api, 0, ("100", "101"))
        await wait_applied(api, "K900000")
        check = await api.ok("GET", "/v1/nodes/default/check", key=ENGINEER_KEY)
        assert check["ok"], check
        # An engineer edits a row by hand and Asterisk picks it up.
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE pjsip_objects SET fields = fields || '{\"context\": \"elsewhere\"}'"
                " WHERE type = 'endpoint' AND id = %s", (phone.username,)
            )  # fmt: skip
        lab.cli(f"sorcery memory cache expire res_pjsip/endpoint {phone.username}")
        assert "elsewhere" in lab.cli(f"pjsip show endpoint {phone.username}")
        check = await api.ok("GET", "/v1/nodes/default/check", key=ENGINEER_KEY)
        drift = {p["customer"]: p for p in check["pbxes"]}["K900000"]
        assert drift["status"] == "drift", check
        assert drift["live"] == [f"PJSIP rows differ from the files: endpoint {phone.username}"]
        repaired = await asyncio.to_thread(console, node, db_url, "check", "--repair")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        check = await api.ok("GET", "/v1/nodes/default/check", key=ENGINEER_KEY)
        assert check["ok"], check
        shown = lab.cli(f"pjsip show endpoint {phone.username}")
        assert "elsewhere" not in shown and "k900000-site-b00" in shown, shown


async def test_a_full_round_leaves_the_cache_warm_and_heals_a_lost_expiry(
    settings: Settings, clean_realtime_lab: Lab, db_url: str
) -> None:
    """A full round expires what its rows changed and marks the rest stale: the objects
    it did not change stay cached (no REGISTER after it waits for PostgreSQL), and one
    whose cache entry is wrong while its row is right (an expiry that was lost) is
    served once more as it is, then read again from its row."""

    lab = clean_realtime_lab
    async with lab_service(settings, lab) as (api, node):
        phone, other = await small_pbx(api, 0, ("100", "101"))
        await wait_applied(api, "K900000")
        assert "k900000-site-b00" in lab.cli(f"pjsip show endpoint {other.username}")
        # A lost expiry: Asterisk caches a row changed by hand, then the row is put back
        # and nobody expires it.
        edit = ("UPDATE pjsip_objects SET fields = fields || %s::jsonb"
                " WHERE type = 'endpoint' AND id = %s")  # fmt: skip
        with psycopg.connect(db_url, autocommit=True) as conn:
            right = conn.execute(
                "SELECT fields->>'context' FROM pjsip_objects WHERE type = 'endpoint'"
                " AND id = %s", (phone.username,)
            ).fetchone()  # fmt: skip
            assert right is not None
            conn.execute(edit, ('{"context": "elsewhere"}', phone.username))
            lab.cli(f"sorcery memory cache expire res_pjsip/endpoint {phone.username}")
            assert "elsewhere" in lab.cli(f"pjsip show endpoint {phone.username}")
            conn.execute(edit, (f'{{"context": "{right[0]}"}}', phone.username))
        done = await asyncio.to_thread(console, node, db_url, "apply", "K900000", "--full")
        assert done.stdout.startswith("applied"), done.stdout + done.stderr
        cached = lab.cli("sorcery memory cache dump res_pjsip/endpoint")
        assert other.username in cached and phone.username in cached, cached
        # Served once more as cached, and refreshed from the row meanwhile.
        lab.cli(f"pjsip show endpoint {phone.username}")
        await wait_until(
            lambda: "elsewhere" not in lab.cli(f"pjsip show endpoint {phone.username}"),
            "the stale object was never read again",
            10,
            0.1,
        )


async def test_a_removed_pbx_and_a_pbx_that_moves_away_leave_no_row_and_no_object(
    settings: Settings, clean_realtime_lab: Lab, clean_second_lab: Lab, db_url: str
) -> None:
    from dataclasses import replace

    from lab_helpers import lab_node

    lab, files_node = clean_realtime_lab, clean_second_lab
    nodes = (lab_node(lab), replace(lab_node(files_node), name="node-b"))
    async with lab_service(settings, lab, nodes=nodes) as (api, _):
        staying, _ = await small_pbx(api, 0, ("100", "101"))
        removed = (await small_pbx(api, 1))[0]
        moving = (await small_pbx(api, 2))[0]
        for c in ("K900000", "K900001", "K900002"):
            await wait_applied(api, c)

        def rows(slug: str) -> int:
            with psycopg.connect(db_url) as conn:
                found = conn.execute("SELECT count(*) FROM pjsip_objects WHERE id LIKE %s",
                                     (f"{slug}-%",)).fetchone()  # fmt: skip
            return int(found[0]) if found else 0

        # A phone's endpoint, AOR and auth; the block's trunk (no credentials): endpoint, AOR.
        assert rows("k900001") == 5 and rows("k900002") == 5
        assert (await api.call("DELETE", "/v1/accounts/K900001/pbx")).status == 204
        before = await revision(api, "K900002")
        await api.ok("PUT", "/v1/accounts/K900002/pbx", {"node": "node-b"})
        await until_applied(api, "K900002", before)

        await wait_until(lambda: not rows("k900001") and not rows("k900002"),
                         "rows left behind", 20, 0.2)  # fmt: skip
        for phone in (removed, moving):
            shown = await asyncio.to_thread(lab_command, lab, "cli",
                                            f"pjsip show endpoint {phone.username}")  # fmt: skip
            assert "Unable to find object" in shown.stdout, shown.stdout
        assert moving.username in files_node.cli(f"pjsip show endpoint {moving.username}")
        assert staying.username in lab.cli(f"pjsip show endpoint {staying.username}")
        assert rows("k900000") == 8


async def test_a_node_switched_to_realtime_gets_every_pbx_rows_at_start(
    settings: Settings, clean_realtime_lab: Lab, db_url: str
) -> None:
    """A node that ran with `pjsip: files` has no rows: when the service starts with
    `pjsip: realtime` for it, every PBX of the node is queued and its rows written. And
    the other way round, a node back on files has its rows dropped."""
    from dataclasses import replace

    from lab_helpers import lab_node

    lab = clean_realtime_lab

    def rows() -> int:
        with psycopg.connect(db_url) as conn:
            found = conn.execute(
                "SELECT count(*) FROM pjsip_objects WHERE pbx_id IS NOT NULL"
            ).fetchone()
        return int(found[0]) if found else 0

    async with lab_service(settings, lab) as (api, _):
        phone = (await small_pbx(api, 0))[0]
        await wait_applied(api, "K900000")
    assert rows() == 5
    files_node = replace(lab_node(lab), pjsip="files")
    async with lab_service(settings, lab, nodes=(files_node,)):
        await wait_until(lambda: rows() == 0, "rows of a files node left", 10, 0.1)
    lab.cli(f"sorcery memory cache expire res_pjsip/endpoint {phone.username}")
    assert "Unable to find object" in lab.cli(f"pjsip show endpoint {phone.username}")
    async with lab_service(settings, lab) as (api, _):
        await wait_until(lambda: rows() >= 5, "no rows written at start", 10, 0.1)
        await wait_applied(api, "K900000")
    assert phone.username in lab.cli(f"pjsip show endpoint {phone.username}")
    assert register(lab, phone).ok
