"""The drift check against the lab: database, files and live Asterisk compared per PBX,
reported over the API and the console, and repaired."""

from __future__ import annotations

import asyncio
from typing import Any

from fixtures_lab import Lab
from fixtures_mail import Inbox
from fixtures_service import ENGINEER_KEY
from helpers import OTHER, TARGET
from lab_helpers import branch_scene, cologne_pbx, console, lab_service, wait_applied

from provisioner.settings import Settings


async def test_drift_is_found_reported_and_repaired(
    settings: Settings, clean_lab: Lab, inbox: Inbox, db_url: str
) -> None:
    async with lab_service(settings, clean_lab) as (api, node):
        await branch_scene(api)
        await cologne_pbx(api)
        await wait_applied(api, TARGET)
        await wait_applied(api, OTHER)
        check = await api.ok("GET", "/v1/nodes/default/check", key=ENGINEER_KEY)
        assert check["ok"] and check["problems"] == [], check
        assert {p["customer"] for p in check["pbxes"]} == {TARGET, OTHER}
        assert all(p["status"] == "ok" for p in check["pbxes"]), check

        # Drift an engineer can cause: an extension removed live, a file edited by hand.
        clean_lab.cli("dialplan remove extension 100@k100200-internal")
        edited = clean_lab.output_dir / "dialplan/tenant-k300400.conf"
        edited.write_text(edited.read_text() + "; a note by hand\n")
        check = await api.ok("GET", "/v1/nodes/default/check", key=ENGINEER_KEY)
        by_customer = {p["customer"]: p for p in check["pbxes"]}
        assert not check["ok"]
        assert by_customer[TARGET]["status"] == "drift"
        assert any("k100200-internal: extensions not live: 100" in line
                   for line in by_customer[TARGET]["live"]), by_customer[TARGET]  # fmt: skip
        assert by_customer[OTHER]["files"] == [
            "dialplan/tenant-k300400.conf differs from the database"
        ]

        found = await asyncio.to_thread(console, node, db_url, "check")
        assert found.returncode == 1, found.stdout + found.stderr
        assert "drift" in found.stdout and "k100200-internal" in found.stdout
        repaired = await asyncio.to_thread(console, node, db_url, "check", "--repair")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        check = await api.ok("GET", "/v1/nodes/default/check", key=ENGINEER_KEY)
        assert check["ok"], [(p["customer"], p["live"]) for p in check["pbxes"] if p["live"]]
        assert list(edited.parent.glob("tenant-k300400.conf.hand-edited-*"))
        assert "100" in clean_lab.cli("dialplan show 100@k100200-internal")


async def test_the_check_is_the_operators(settings: Settings, clean_lab: Lab, inbox: Inbox) -> None:
    async with lab_service(settings, clean_lab) as (api, _node):
        await api.problem(403, "operator_only", "GET", "/v1/nodes/default/check",
                          headers={"X-Acting-Customer": TARGET})  # fmt: skip
        await api.problem(404, "node_not_found", "GET", "/v1/nodes/elsewhere/check")
        # Nothing applied to this node yet: not even its own carrier files are there.
        answer: Any = await api.ok("GET", "/v1/nodes/default/check")
        assert answer["pbxes"] == [] and not answer["ok"]
        assert "pjsip/node-carrier.conf differs from what the config says" in answer["problems"]


async def test_a_repair_of_the_node_alone_writes_and_loads_its_own_files(
    settings: Settings, clean_lab: Lab, inbox: Inbox, db_url: str
) -> None:
    """Drift of the node's own carrier files while no PBX drifted: the repair queues no
    PBX job, and must still write the files and reload."""
    async with lab_service(settings, clean_lab) as (api, node):
        answer: Any = await api.ok("GET", "/v1/nodes/default/check")
        assert "pjsip/node-carrier.conf differs from what the config says" in answer["problems"]
        repaired = await asyncio.to_thread(console, node, db_url, "check", "--repair")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        answer = await api.ok("GET", "/v1/nodes/default/check")
        assert answer["ok"] and answer["problems"] == [], answer
        assert "carrier" in clean_lab.cli("pjsip show endpoints")
