"""Generated config applied to the lab's real Asterisk, through the public API."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures_lab import Lab
from fixtures_mail import Inbox
from fixtures_service import ENGINEER_KEY, Api, FakeClock
from helpers import BLOCK, OWNER, TARGET, path_of, request_assignment
from lab_helpers import (
    branch_scene,
    cologne_pbx,
    console_env,
    lab_command,
    lab_node,
    lab_service,
    lab_up_again,
    wait_applied,
)
from panoramisk import Manager
from psycopg_pool import AsyncConnectionPool
from waiting import wait_until

from provisioner.asterisk import files
from provisioner.db import locks
from provisioner.render.render import redact
from provisioner.settings import Settings


@pytest.fixture
async def lab_api(settings: Settings, clock: FakeClock, clean_lab: Lab) -> AsyncIterator[Api]:
    del clock  # the assignment flow may use it; the applier runs on real time
    async with lab_service(settings, clean_lab) as (api, _):
        yield api


async def live_names(ami: Manager) -> tuple[set[str], set[str]]:
    reply: Any = await ami.send_action({"Action": "PJSIPShowEndpoints"}, as_list=True)
    endpoints = {m.ObjectName for m in reply if m.get("Event") == "EndpointList"}
    plan: Any = await ami.send_action({"Action": "ShowDialPlan"}, as_list=True)
    contexts = {m.Context for m in plan if m.get("Event") == "ListDialplan"}
    return endpoints, contexts


async def test_full_flow_reaches_asterisk_and_reset_removes_it(
    lab_api: Api, inbox: Inbox, ami: Manager, clean_lab: Lab, db: psycopg.Connection[Any]
) -> None:
    api = lab_api
    await branch_scene(api)
    await wait_applied(api, TARGET)
    endpoints, contexts = await live_names(ami)
    assert {"k100200-100", "k100200-trunk-ber-main", "carrier"} <= endpoints
    assert "k100200-trunk-muc-main" not in endpoints

    _, owner_link, target_link = await request_assignment(api, inbox)
    await api.client.post(path_of(owner_link))
    await api.client.post(path_of(target_link))
    await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/200", {
        "name": "Carla München", "site_block": BLOCK, "did": "+49891234560",
        "pickup_group": "sales",
    })  # fmt: skip
    state = await wait_applied(api, TARGET)

    files = state["files"]
    pjsip = files["pjsip/tenant-k100200.conf"]
    assert "[k100200-trunk-muc-main]" in pjsip and "accountcode = K200300" in pjsip
    assert "username = k200300-muc" in pjsip
    assert "Munich-trunk-1" not in str(await api.ok("GET", f"/v1/accounts/{OWNER}/blocks"))
    # The API shows the file with <secret> where the disk has A's trunk password.
    on_disk = (clean_lab.output_dir / "pjsip/tenant-k100200.conf").read_text()
    assert "password = Munich-trunk-1" in on_disk and "Munich-trunk-1" not in pjsip
    assert redact(on_disk) == pjsip
    endpoints, contexts = await live_names(ami)
    assert {"k100200-200", "k100200-trunk-muc-main"} <= endpoints
    assert {"k100200-in-muc-main", "k100200-site-muc-main", "carrier-in"} <= contexts

    diff = await api.call("GET", f"/v1/accounts/{TARGET}/pbx/config/diff?from=1")
    assert diff.status == 200 and "+[k100200-trunk-muc-main]" in await diff.text()

    await api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment")
    state = await wait_applied(api, TARGET)
    endpoints, contexts = await live_names(ami)
    assert "k100200-trunk-muc-main" not in endpoints
    assert "k100200-in-muc-main" not in contexts and "k100200-site-muc-main" not in contexts
    assert "k100200-200" in endpoints  # the phone stays, without the Munich numbers
    for path in clean_lab.output_dir.rglob("*.conf"):
        assert "+4989123456" not in path.read_text(), f"{path} still has A's numbers"
    extensions = await api.ok("GET", f"/v1/accounts/{TARGET}/pbx/extensions")
    carla = next(e for e in extensions["extensions"] if e["ext"] == "200")
    assert carla["fallback"] is True and carla["effective_site_block"] == "ber-main"
    assert carla["did_active"] is False


async def test_asterisk_down_keeps_the_apply_pending_until_it_is_back(
    lab_api: Api, clean_lab: Lab
) -> None:
    api = lab_api
    stop = await asyncio.to_thread(lab_command, clean_lab, "down")
    assert stop.returncode == 0, stop.stderr
    # Down means down: no Asterisk of this lab, no mount left behind.
    assert (await asyncio.to_thread(lab_command, clean_lab, "status")).returncode == 3
    assert "rootfs-sid" not in await asyncio.to_thread(Path("/proc/mounts").read_text)
    try:
        await branch_scene(api)

        async def failing() -> dict[str, Any] | None:
            state = await api.ok("GET", f"/v1/accounts/{TARGET}/pbx/config")
            return state if state["apply_error"] else None

        state = await wait_until(failing, "no apply error while the node is down", 10, 0.2)
        assert state["apply_state"] == "pending" and "AMI" in state["apply_error"]
    finally:
        await lab_up_again(clean_lab)
    state = await wait_applied(api, TARGET, timeout=40)
    assert state["apply_error"] is None


async def test_a_broken_tenant_file_breaks_no_other_pbx(
    lab_api: Api, ami: Manager, clean_lab: Lab
) -> None:
    api = lab_api
    await branch_scene(api)
    await cologne_pbx(api)
    await wait_applied(api, TARGET)
    await wait_applied(api, "K300400")

    # Someone breaks C's file by hand: a section that never closes.
    broken = clean_lab.output_dir / "pjsip/tenant-k300400.conf"
    broken.write_text(broken.read_text() + "\n[globtest\ntype = endpoint\n")
    # Any apply now reloads res_pjsip; B's new phone must come up, and all else stay.
    await api.ok(
        "PUT",
        f"/v1/accounts/{TARGET}/pbx/extensions/101",
        {"name": "Ben Berlin", "site_block": "ber-main"},
    )
    await wait_applied(api, TARGET)
    endpoints, _ = await live_names(ami)
    assert {"k100200-100", "k100200-101", "k300400-100", "carrier"} <= endpoints
    kept = list(broken.parent.glob("tenant-k300400.conf.hand-edited-*"))
    assert kept and "[globtest" in kept[0].read_text()
    c_state = await api.ok("GET", "/v1/accounts/K300400/pbx/config")
    assert "changed by hand" in (c_state["apply_error"] or "")
    assert "[globtest" not in broken.read_text()
    # Repaired and live again: applied (with the note), not failed until its next change.
    assert c_state["apply_state"] == "applied", c_state


async def test_a_pbx_that_cannot_be_rendered_holds_back_no_other(
    lab_api: Api, ami: Manager, clean_lab: Lab, db: psycopg.Connection[Any]
) -> None:
    """The case the API once let through: PUT /v1/accounts/LONGCUSTOMER1/blocks/b<63 x>,
    whose trunk name (84 characters) cannot be config. The API refuses such ids now;
    rows written before can still be there. That PBX is marked failed with the reason
    and waits for a retry; B's change, in the same round, goes live at once."""
    api = lab_api
    await branch_scene(api)
    await wait_applied(api, TARGET)
    long_customer = "LONGCUSTOMER1"
    await api.ok("PUT", f"/v1/accounts/{long_customer}",
                 {"name": "Lang GmbH", "email": "it@lang.example", "language": "de"})  # fmt: skip
    await api.ok("PUT", f"/v1/accounts/{long_customer}/pbx")
    db.execute(
        "INSERT INTO blocks (id, owner, base_number, range_first, range_last, country_code,"
        " area_code, mode, created_at, updated_at) VALUES (%s, %s, '+4922199999', '0', '9',"
        " 49, '221', 'pbx', now(), now())",
        ("b" + "x" * 63, long_customer),
    )
    db.execute("INSERT INTO apply_queue (pbx_id, reason, requested_at, next_attempt_at)"
               " SELECT id, 'test', now(), now() FROM pbxes WHERE customer = %s"
               " ON CONFLICT DO NOTHING", (long_customer,))  # fmt: skip
    await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/101",
                 {"name": "Ben Berlin", "site_block": "ber-main"})  # fmt: skip
    await wait_applied(api, TARGET)
    endpoints, _ = await live_names(ami)
    assert {"k100200-100", "k100200-101"} <= endpoints
    state = await api.ok("GET", f"/v1/accounts/{long_customer}/pbx/config")
    assert state["apply_state"] == "failed", state
    assert "cannot render" in state["apply_error"] and "not a config token" in state["apply_error"]
    job = db.execute(
        "SELECT claimed_until, attempts FROM apply_queue q JOIN pbxes p ON p.id = q.pbx_id"
        " WHERE p.customer = %s",
        (long_customer,),
    ).fetchone()
    assert job is not None and job[0] is None and job[1] >= 1  # waits for a retry, not leased
    metrics = await (await api.call("GET", "/metrics", key="")).text()
    assert re.search(r"^provisioner_apply_pbx_failures_total [1-9]", metrics, re.M), metrics
    # The portal hears of it: an apply.failed event with the reason.
    feed = await api.ok("GET", "/v1/events?limit=500")
    failed = [
        e["data"] for e in feed["events"]
        if e["type"] == "apply.failed" and e["data"]["customer"] == long_customer
    ]  # fmt: skip
    assert failed and "cannot render" in failed[0]["error"], feed


def test_output_folder_is_the_lab_folder(lab: Lab) -> None:
    assert lab.output_dir == Path(lab.folder) / "etc" / "provisioner"


async def pjsip_reloads(api: Api) -> float:
    """The res_pjsip reloads so far, as Prometheus scrapes them from /metrics."""
    text = await (await api.call("GET", "/metrics", key="")).text()
    found = re.search(
        r'^provisioner_reloads_total\{module="res_pjsip.so",result="ok"\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


async def test_a_burst_of_changes_ends_in_a_handful_of_reloads(lab_api: Api) -> None:
    api = lab_api
    await branch_scene(api)
    await wait_applied(api, TARGET)
    before = await pjsip_reloads(api)
    await asyncio.gather(*(
        api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/{300 + i}",
               {"name": f"Phone {i}", "site_block": "ber-main"})
        for i in range(30)
    ))  # fmt: skip
    state = await wait_applied(api, TARGET)
    reloads = await pjsip_reloads(api) - before
    assert "[k100200-329]" in state["files"]["pjsip/tenant-k100200.conf"]
    assert 1 <= reloads <= 5, f"30 changes took {reloads} res_pjsip reloads"


async def test_two_instances_share_a_node_without_applying_twice(
    api: Api, clean_lab: Lab, db_url: str, db: psycopg.Connection[Any], settings: Settings
) -> None:
    """Two appliers (as in two service instances) race for the same node: the node lock
    lets one round through at a time, and every job is applied exactly once."""
    from psycopg_pool import AsyncConnectionPool

    from provisioner.apply.round import Applier
    from provisioner.clock import system_clock

    await branch_scene(api)  # `api` runs no applier: it has no nodes configured
    node = lab_node(clean_lab)
    pools = [AsyncConnectionPool(db_url, min_size=1, max_size=3, open=False) for _ in range(2)]
    for pool in pools:
        await pool.open()
    try:
        box = settings.secret_box()
        taken = await asyncio.gather(*(Applier(p, node, system_clock, box).round() for p in pools))
        while db.execute("SELECT count(*) FROM apply_queue").fetchone() != (0,):
            taken.append(await Applier(pools[0], node, system_clock, box).round())
    finally:
        for pool in pools:
            await pool.close()
    assert sum(taken) == 1, taken  # one PBX with changes, applied once
    revisions = db.execute("SELECT count(*) FROM config_revisions").fetchone()
    assert revisions == (1,)
    state = db.execute("SELECT state FROM apply_state").fetchall()
    assert state == [("applied",)]


async def test_engineer_commands_render_diff_and_apply(
    api: Api, clean_lab: Lab, db_url: str, tmp_path: Path
) -> None:
    """`provisioner render`, `apply` and `diff` from the console, against the lab."""
    import sys

    await branch_scene(api)
    env = console_env(lab_node(clean_lab), db_url)

    def provisioner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "provisioner", *args],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip

    rendered = await asyncio.to_thread(provisioner, "render", TARGET, "--out", str(tmp_path))
    assert rendered.returncode == 0, rendered.stderr
    assert "[k100200-100]" in (tmp_path / "pjsip/tenant-k100200.conf").read_text()
    applied = await asyncio.to_thread(provisioner, "apply", TARGET)
    assert applied.returncode == 0 and applied.stdout.startswith("applied"), applied.stderr
    # `render` shows what `apply` writes, with <secret> for the secrets.
    on_disk = (clean_lab.output_dir / "pjsip/tenant-k100200.conf").read_text()
    shown = (tmp_path / "pjsip/tenant-k100200.conf").read_text()
    assert redact(on_disk) == shown and "password = Berlin-trunk-1" in on_disk
    assert "Berlin-trunk-1" not in shown and "md5_cred = <secret>" in shown
    assert "k100200-100" in clean_lab.cli("pjsip show endpoints")
    await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/101",
                 {"name": "Ben Berlin", "site_block": "ber-main"})  # fmt: skip
    await asyncio.to_thread(provisioner, "apply", TARGET)
    diff = await asyncio.to_thread(provisioner, "diff", TARGET, "--from", "1", "--to", "2")
    assert diff.returncode == 0 and "+[k100200-101]" in diff.stdout, diff.stdout


async def test_a_node_without_file_group_writes_files_asterisk_can_read(
    settings: Settings, clean_lab: Lab, ami: Manager
) -> None:
    """No `file_group` in the node's config: the files take the group of the output
    folder (the lab's is Asterisk's), so the lab's Asterisk, running as its own user,
    reads them and the PBX goes live."""
    node = replace(lab_node(clean_lab), file_group=None)
    async with lab_service(settings, clean_lab, nodes=(node,)) as (api, _):
        await branch_scene(api)
        state = await wait_applied(api, TARGET)
    assert state["apply_error"] is None, state
    folder_group = clean_lab.output_dir.stat().st_gid
    written = clean_lab.output_dir / "pjsip/tenant-k100200.conf"
    assert written.stat().st_gid == folder_group != os.getgid()
    endpoints, _ = await live_names(ami)
    assert "k100200-100" in endpoints


def test_a_file_asterisk_cannot_read_is_named_with_its_mode_and_group(tmp_path: Path) -> None:
    folder = tmp_path / "prov.d"
    folder.mkdir()
    os.chown(folder, -1, 4242)  # Asterisk's group, say
    files.write_atomic(folder, "pjsip/tenant-a.conf", "[a]\n")
    made = folder / "pjsip/tenant-a.conf"
    assert made.stat().st_gid == 4242 and (folder / "pjsip").stat().st_gid == 4242
    assert files.unreadable(folder, ["pjsip/tenant-a.conf"]) == []
    os.chown(made, -1, 4343)
    assert files.unreadable(folder, ["pjsip/tenant-a.conf"]) == [
        f"Asterisk cannot read {made}: mode 0640, group 4343, not 4242 (the output"
        " folder's; set the node's file_group to it, or leave it out)"
    ]
    made.chmod(0o644)  # readable by anyone: no problem, whatever its group
    assert files.unreadable(folder, ["pjsip/tenant-a.conf"]) == []


async def test_files_of_a_group_asterisk_is_not_in_are_named_as_the_reason(
    settings: Settings, clean_lab: Lab
) -> None:
    """A node whose file_group is not Asterisk's (root's here): Asterisk cannot read the
    PBX's files; the apply fails and says which file, its mode and group, and so does
    the node's check."""
    node = replace(lab_node(clean_lab), file_group=0)
    async with lab_service(settings, clean_lab, nodes=(node,)) as (api, _):
        await branch_scene(api)

        async def unreadable() -> dict[str, Any] | None:
            state = await api.ok("GET", f"/v1/accounts/{TARGET}/pbx/config")
            return state if "Asterisk cannot read" in (state["apply_error"] or "") else None

        state = await wait_until(unreadable, "the apply never said Asterisk cannot read", 60, 0.2)
        check = await api.ok("GET", "/v1/nodes/default/check", key=ENGINEER_KEY)
    assert "pjsip/tenant-k100200.conf: mode 0640, group root" in state["apply_error"]
    assert any("Asterisk cannot read" in p for p in check["problems"]), check


async def test_after_a_change_the_state_is_pending_until_the_round_that_took_it(
    settings: Settings, clean_lab: Lab
) -> None:
    """No window in which a client that just made a change reads `applied` of the
    revision before it: the round is held off (the node's applier lock taken here) and
    the state must say `pending` from the change's commit on."""
    async with lab_service(settings, clean_lab) as (api, node):
        await branch_scene(api)
        before = await wait_applied(api, TARGET)
        async with (
            AsyncConnectionPool(settings.database.url.value, min_size=1, open=False) as pool,
            locks.held(pool, locks.node(node.name)) as taken,
        ):
            assert taken
            await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/300",
                         {"name": "Bruno", "site_block": "ber-main"})  # fmt: skip
            state = await api.ok("GET", f"/v1/accounts/{TARGET}/pbx/config")
            assert state["apply_state"] == "pending", state
            assert state["revision"] == before["revision"]  # not rendered yet
        after = await wait_applied(api, TARGET)
        assert after["revision"] > before["revision"]
        assert any("[k100200-300]" in text for text in after["files"].values())
