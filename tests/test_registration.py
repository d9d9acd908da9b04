"""A carrier that requires REGISTER: the block's trunk registers with the owner's
credentials while a PBX uses the block, refreshes the binding, and removes it when the
block leaves the PBX; sipp is the registrar and checks every digest."""

from __future__ import annotations

import asyncio

from fixtures_lab import Lab
from fixtures_mail import Inbox
from fixtures_service import FakeClock
from helpers import BLOCK, OWNER, TARGET, assign_and_confirm
from lab_helpers import CARRIER_HOST, branch_scene, lab_service, wait_applied
from sipp_peer import Running, SipMessage, parse_trace, start_scenario
from waiting import wait_until

from provisioner.settings import Settings

MUNICH = ("k200300-muc", "Munich-trunk-1")


async def test_a_registering_trunk_registers_refreshes_and_unregisters(
    settings: Settings, clock: FakeClock, mode_lab: Lab, inbox: Inbox
) -> None:
    """On both kinds of node: on a realtime one the registration stays in the PBX's file
    (its auth is a row) and only res_pjsip_outbound_registration is reloaded."""
    del clock
    clean_lab = mode_lab
    async with lab_service(settings, clean_lab) as (api, node):
        await branch_scene(api)
        await api.ok("PUT", f"/v1/accounts/{OWNER}/blocks/{BLOCK}", {
            "number": "+4989123456", "range": "0-99", "mode": "pbx",
            "trunk": {"username": MUNICH[0], "password": MUNICH[1], "register": True},
        })  # fmt: skip
        registrar = start_scenario(
            "registrar_auth", remote_port=clean_lab.sip_port, local_ip=CARRIER_HOST,
            local_port=node.carrier_port, timeout=90,
            variables={"trunk_user": MUNICH[0], "trunk_password": MUNICH[1]},
        )  # fmt: skip
        await assign_and_confirm(api, inbox)
        state = await wait_applied(api, TARGET)
        assert "type = registration" in state["files"]["pjsip/tenant-k100200.conf"]
        await until_registered(clean_lab, "k100200-trunk-muc-main")
        await until_granted(registrar, 2)  # registered, then refreshed by Asterisk
        await api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment")
        state = await wait_applied(api, TARGET)
        assert "type = registration" not in state["files"]["pjsip/tenant-k100200.conf"]
        result = await asyncio.to_thread(registrar.wait, 60)

    evidence = result.evidence()
    assert result.ok, evidence  # the scenario ended: the binding was removed
    registers = [m for m in result.messages if m.method == "REGISTER"]
    assert len(granted(result.messages)) >= 3, evidence  # registered, refreshed, removed
    assert all(f"sip:{MUNICH[0]}@" in m.headers["to"] for m in registers), evidence


def granted(messages: list[SipMessage]) -> list[SipMessage]:
    """The registrar's 200s to a REGISTER."""
    return [
        m for m in messages
        if m.direction == "sent" and m.status == 200 and "REGISTER" in m.headers.get("cseq", "")
    ]  # fmt: skip


async def until_granted(registrar: Running, count: int, timeout: float = 30) -> None:
    """Until the running registrar has granted `count` REGISTERs (read from the trace
    sipp writes as it goes)."""
    trace = registrar.work / "messages.log"

    def enough() -> bool:
        text = trace.read_text(errors="replace") if trace.exists() else ""
        return len(granted(parse_trace(text))) >= count

    await wait_until(enough, f"the registrar granted fewer than {count}", timeout, 0.2)


async def until_registered(lab: Lab, name: str, timeout: float = 20) -> None:

    async def registered() -> bool:
        listing = await asyncio.to_thread(lab.cli, "pjsip show registrations")
        return any(name in line and "Registered" in line for line in listing.splitlines())

    await wait_until(registered, f"{name} not registered", timeout, 0.2)
