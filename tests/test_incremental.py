"""The incremental apply against the lab's Asterisk: after moves, resets, extension and
ring-group changes applied without a dialplan reload, the live dialplan and endpoints
are what a full reload of the same files gives; a change that does not read back as
the files say falls back to a full reload and ends applied."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from fixtures_lab import Lab
from fixtures_mail import Inbox
from fixtures_service import Api, FakeClock
from helpers import BLOCK, OTHER, TARGET, assign_and_confirm, request_assignment
from lab_helpers import branch_scene, cologne_pbx, lab_node, lab_service, wait_applied
from panoramisk import Manager
from waiting import wait_until

from provisioner.settings import Settings


@pytest.fixture
async def lab_api(settings: Settings, clock: FakeClock, clean_lab: Lab) -> AsyncIterator[Api]:
    del clock
    async with lab_service(settings, clean_lab) as (api, _):
        yield api


async def live_lines(ami: Manager) -> tuple[set[tuple[str, ...]], set[str]]:
    """Every dialplan line (context, extension, priority, application, data) and include,
    and every endpoint, as Asterisk has them now (who registered them aside)."""
    plan: Any = await ami.send_action({"Action": "ShowDialPlan"}, as_list=True)
    lines: set[tuple[str, ...]] = set()
    for m in plan:
        if m.get("Event") != "ListDialplan":
            continue
        if m.get("IncludeContext"):
            lines.add((m.Context, "include", m.IncludeContext))
        else:
            lines.add((m.Context, m.Extension, m.Priority, m.Application, m.get("AppData") or ""))
    reply: Any = await ami.send_action({"Action": "PJSIPShowEndpoints"}, as_list=True)
    return lines, {m.ObjectName for m in reply if m.get("Event") == "EndpointList"}


async def counters(api: Api) -> dict[str, float]:
    text = await (await api.call("GET", "/metrics")).text()
    found = {}
    for name, labels, value in re.findall(r"^(provisioner_\w+?)(?:_total)?\{(.*?)\} (\S+)$",
                                          text, re.M):  # fmt: skip
        found[f"{name}{{{labels}}}"] = float(value)
    return found


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


PBX_CONFIG = 'provisioner_reloads{module="pbx_config.so",result="ok"}'
RES_PJSIP = 'provisioner_reloads{module="res_pjsip.so",result="ok"}'
INCREMENTAL = 'provisioner_apply_rounds{mode="incremental"}'
FALLBACK = 'provisioner_apply_rounds{mode="fallback"}'


async def test_incremental_changes_end_where_a_full_reload_of_the_files_ends(
    lab_api: Api, inbox: Inbox, ami: Manager, clean_lab: Lab
) -> None:
    api = lab_api
    await branch_scene(api)
    await cologne_pbx(api)
    await wait_applied(api, TARGET)
    await wait_applied(api, OTHER)
    start = await counters(api)

    # A's Munich block moves to B's PBX: its numbers route in B, with a phone there.
    await assign_and_confirm(api, inbox)
    await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/200", {
        "name": "Carla München", "site_block": BLOCK, "did": "+49891234560",
        "pickup_group": "sales",
    })  # fmt: skip
    await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/ring-groups/600", {
        "name": "Reception", "strategy": "hunt", "members": ["200", "100"], "ring_seconds": 15,
    })  # fmt: skip
    await wait_applied(api, TARGET)
    # The ring group changes strategy and members, a phone its name, C gets a phone.
    await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/ring-groups/600", {
        "name": "Empfang", "strategy": "ringall", "members": ["100"], "ring_seconds": 20,
    })  # fmt: skip
    await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/100",
                 {"name": "Anna B.", "site_block": "ber-main"})  # fmt: skip
    await api.ok("PUT", f"/v1/accounts/{OTHER}/pbx/extensions/101",
                 {"name": "Fritz Köln", "site_block": "cgn-main"})  # fmt: skip
    await wait_applied(api, TARGET)
    await wait_applied(api, OTHER)
    moved, _ = await live_lines(ami)
    assert ("carrier-in", "_+4989123456X", "7", "Goto", "k100200-in-muc-main,${EXTEN},1") in moved
    # A resets: the numbers leave B's PBX again.
    await api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment")
    await wait_applied(api, TARGET)

    after = await counters(api)
    assert delta(after, start, INCREMENTAL) >= 3
    assert delta(after, start, FALLBACK) == 0
    assert delta(after, start, PBX_CONFIG) == 0, "a dialplan change reloaded pbx_config"
    assert delta(after, start, RES_PJSIP) >= 1  # the new phones and trunks came with one

    incremental = await live_lines(ami)
    assert not any("k100200-in-muc-main" in line for line in incremental[0])
    clean_lab.cli("dialplan reload")
    clean_lab.cli("module reload res_pjsip.so")
    full = await live_lines(ami)
    assert incremental[0] == full[0], (
        f"only live incrementally: {sorted(incremental[0] - full[0])[:10]},"
        f" only after a full reload: {sorted(full[0] - incremental[0])[:10]}"
    )
    assert incremental[1] == full[1]


async def test_a_change_that_does_not_read_back_falls_back_to_a_full_reload(
    lab_api: Api, ami: Manager, clean_lab: Lab
) -> None:
    api = lab_api
    await branch_scene(api)
    await wait_applied(api, TARGET)
    # Somebody adds a line to B's internal context by hand (not in any file).
    clean_lab.cli("dialplan add extension 999,1,Hangup() into k100200-internal")
    start = await counters(api)
    await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/101",
                 {"name": "Ben Berlin", "site_block": "ber-main"})  # fmt: skip
    state = await wait_applied(api, TARGET)
    after = await counters(api)
    assert delta(after, start, FALLBACK) == 1
    assert delta(after, start, PBX_CONFIG) == 1
    assert state["apply_error"] is None
    lines, endpoints = await live_lines(ami)
    assert not any(line[:2] == ("k100200-internal", "999") for line in lines)
    assert ("k100200-internal", "101", "1", "Dial", "PJSIP/k100200-101,30,tT") in lines
    assert "k100200-101" in endpoints


async def test_the_config_api_says_which_part_is_live(lab_api: Api) -> None:
    api = lab_api
    await branch_scene(api)
    state = await wait_applied(api, TARGET)
    # (no SIP router in front of this node: no router state)
    assert state["live"] == {
        "dialplan": state["revision"], "pjsip": state["revision"],
        "router": None, "router_error": None,
    }  # fmt: skip
    # The portal learns it from the event feed too (the same events go to webhooks):
    # applied once both parts are live in the lab, with that revision.
    feed = await api.ok("GET", "/v1/events?limit=500")
    applied = [e["data"] for e in feed["events"]
               if e["type"] == "apply.applied" and e["data"]["customer"] == TARGET]  # fmt: skip
    assert applied and applied[-1]["revision"] == state["revision"], feed
    assert applied[-1]["node"] == "default" and applied[-1]["error"] is None


async def test_deleted_extensions_and_ring_groups_leave_asterisk(
    lab_api: Api, ami: Manager, clean_lab: Lab
) -> None:
    api = lab_api
    await branch_scene(api)
    await cologne_pbx(api)
    pbx = f"/v1/accounts/{TARGET}/pbx"
    await api.ok("PUT", f"{pbx}/extensions/101", {"name": "Ben", "site_block": "ber-main"})
    await api.ok("PUT", f"{pbx}/ring-groups/600", {
        "name": "Empfang", "strategy": "ringall", "members": ["101"], "ring_seconds": 20,
    })  # fmt: skip
    await wait_applied(api, TARGET)
    await wait_applied(api, OTHER)
    lines, endpoints = await live_lines(ami)
    assert "k100200-101" in endpoints
    assert any(line[:2] == ("k100200-internal", "600") for line in lines)

    # A member of a ring group, or a block's default target, cannot go: 409, nothing changes.
    await api.problem(409, "extension_in_use", "DELETE", f"{pbx}/extensions/101")
    await api.problem(409, "extension_in_use", "DELETE", f"{pbx}/extensions/100")
    assert (await api.call("DELETE", f"{pbx}/ring-groups/600")).status == 204
    assert (await api.call("DELETE", f"{pbx}/extensions/101")).status == 204
    await api.problem(404, "extension_not_found", "DELETE", f"{pbx}/extensions/101")
    await api.problem(404, "ring_group_not_found", "DELETE", f"{pbx}/ring-groups/600")
    state = await wait_applied(api, TARGET)
    assert "k100200-101" not in state["files"]["pjsip/tenant-k100200.conf"]

    lines, endpoints = await live_lines(ami)
    assert "k100200-101" not in endpoints
    assert not any(line[0] == "k100200-internal" and line[1] in ("101", "600") for line in lines)
    assert {"k100200-100", "k300400-100", "carrier"} <= endpoints  # the rest untouched
    assert "There is no such" in clean_lab.cli("dialplan show 101@k100200-internal") or (
        "k100200-101" not in clean_lab.cli("dialplan show 101@k100200-internal")
    )
    listed = await api.ok("GET", f"{pbx}/extensions")
    assert [e["ext"] for e in listed["extensions"]] == ["100"]
    clean_lab.cli("dialplan reload")
    assert (await live_lines(ami))[0] == lines  # what a full reload of the files gives


async def test_a_removed_pbx_leaves_asterisk_and_can_come_back(
    lab_api: Api, inbox: Inbox, ami: Manager, clean_lab: Lab
) -> None:
    api = lab_api
    await branch_scene(api)
    await cologne_pbx(api)
    await wait_applied(api, TARGET)
    await wait_applied(api, OTHER)
    before, _ = await live_lines(ami)
    b_lines = {line for line in before if line[0].startswith("k100200-")}

    # B's PBX has a block waiting for confirmations: it cannot go.
    await request_assignment(api, inbox)
    await api.problem(409, "pbx_in_use", "DELETE", f"/v1/accounts/{TARGET}/pbx")
    # C's can: its phones, files, endpoints and contexts go; B is untouched.
    assert (await api.call("DELETE", f"/v1/accounts/{OTHER}/pbx")).status == 204
    await api.problem(404, "pbx_not_found", "GET", f"/v1/accounts/{OTHER}/pbx/config")
    await api.problem(404, "pbx_not_found", "DELETE", f"/v1/accounts/{OTHER}/pbx")

    async def gone() -> bool:
        lines, endpoints = await live_lines(ami)
        files = list(clean_lab.output_dir.rglob("tenant-k300400.conf"))
        return (
            not files
            and not any(e.startswith("k300400-") for e in endpoints)
            and not any(line[0].startswith("k300400-") or "k300400" in line[-1] for line in lines)
        )

    await wait_until(gone, "k300400 still on the node", 20, 0.2)
    lines, endpoints = await live_lines(ami)
    assert {line for line in lines if line[0].startswith("k100200-")} == b_lines
    assert "k100200-100" in endpoints
    blocks = await api.ok("GET", f"/v1/accounts/{OTHER}/blocks")
    assert all(b["used_by_pbx"] is None for b in blocks["blocks"])

    # Created again: empty (no phones), its own block's numbers route to it again.
    created = await api.call("PUT", f"/v1/accounts/{OTHER}/pbx")
    assert created.status == 201
    state = await wait_applied(api, OTHER)
    assert "[k300400-100]" not in state["files"]["pjsip/tenant-k300400.conf"]
    lines, _ = await live_lines(ami)
    assert any(line[0] == "k300400-in-cgn-main" for line in lines)
    clean_lab.cli("dialplan reload")
    assert (await live_lines(ami))[0] == lines  # what a full reload of the files gives


async def test_the_worker_finds_drift_on_its_timer_and_repairs_it(
    settings: Settings, clean_lab: Lab, ami: Manager
) -> None:
    """Rounds look only at what they change; the drift check on the worker's timer
    finds what changed behind their back (here: an extension removed from the live
    dialplan by hand) and repairs it by a full round."""
    async with lab_service(
        replace(settings, asterisk=replace(settings.asterisk, drift_check_seconds=1)), clean_lab
    ) as (api, _):
        await branch_scene(api)
        await wait_applied(api, TARGET)
        start = await counters(api)
        clean_lab.cli("dialplan remove extension 100@k100200-internal")

        async def repaired() -> bool:
            lines, _ = await live_lines(ami)
            return ("k100200-internal", "100", "1", "Dial", "PJSIP/k100200-100,30,tT") in lines

        await wait_until(repaired, "drift not repaired", 20, 0.2)
        after = await counters(api)
        assert delta(after, start, 'provisioner_apply_rounds{mode="full"}') >= 1
        assert delta(after, start, PBX_CONFIG) >= 1


async def test_a_pbx_moves_to_another_node_live_there_before_it_leaves(
    settings: Settings, clean_lab: Lab, clean_second_lab: Lab, ami: Manager
) -> None:
    second = clean_second_lab
    old, new = lab_node(clean_lab), replace(lab_node(second), name="node-b")
    async with lab_service(settings, clean_lab, nodes=(old, new)) as (api, _):
        await branch_scene(api)
        await cologne_pbx(api)
        await wait_applied(api, TARGET)
        await wait_applied(api, OTHER)
        c_before = {line for line in (await live_lines(ami))[0] if line[0].startswith("k300400")}

        moved = await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx", {"node": "node-b"})
        assert moved["node"] == "node-b" and moved["moving_from"] == "default"
        await api.problem(409, "pbx_moving", "PUT", f"/v1/accounts/{TARGET}/pbx",
                          {"node": "default"})  # fmt: skip
        state = await wait_applied(api, TARGET)
        assert state["node"] == "node-b"

        async def left() -> bool:
            pbx = await api.ok("GET", f"/v1/accounts/{TARGET}/pbx")
            return pbx["moving_from"] is None

        await wait_until(left, "never left node default", 20, 0.2)

        # The new node has it, files and live; the old one has nothing of it left.
        assert (second.output_dir / "pjsip/tenant-k100200.conf").exists()
        assert "k100200-100" in second.cli("pjsip show endpoints")
        assert "k100200-in-ber-main" in second.cli("dialplan show +49301234567@carrier-in")
        assert not list(clean_lab.output_dir.rglob("tenant-k100200.conf"))
        lines, endpoints = await live_lines(ami)
        assert not any(e.startswith("k100200-") for e in endpoints)
        assert not any("k100200" in " ".join(line) for line in lines)
        # C, on the old node, untouched.
        assert {line for line in lines if line[0].startswith("k300400")} == c_before
