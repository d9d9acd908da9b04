"""numbering.country really works: an Austrian operator (AT) with a PBX in Vienna (01)
and Graz (0316). Its phones dial 133/144/112 as emergency calls, local and national
numbers get +43, and the emergency numbers cannot be extensions; proven with sipp
calls through the lab's Asterisk, as the German scenarios are in test_calls.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from fixtures_lab import Lab
from fixtures_service import Api, FakeClock
from lab_helpers import CARRIER_HOST, lab_service, wait_applied
from ports import free_port
from sipp_peer import run_scenario, start_scenario

from provisioner.domain.numbering import plan
from provisioner.settings import Numbering, Settings

WIEN = ("wien-main", "+4315123400", ("k500600-wien", "Wien-trunk-1"))
GRAZ = ("graz-main", "+43316123400", ("k500600-graz", "Graz-trunk-1"))


def test_the_austrian_plan_comes_from_the_country() -> None:
    at, de = plan("AT"), plan("DE")
    assert at.country_code == "43" and de.country_code == "49"
    assert at.emergency == ("112", "122", "133", "144") and de.emergency == ("110", "112")
    assert at.is_reserved("133") and not at.is_reserved("110") and de.is_reserved("110")
    assert at.is_reserved("1450") and at.is_reserved("11800") and not at.is_reserved("200")


async def test_an_austrian_pbx_dials_its_emergency_and_national_numbers(
    settings: Settings, clock: FakeClock, clean_lab: Lab
) -> None:
    del clock
    async with lab_service(replace(settings, numbering=Numbering(country="AT")), clean_lab) as (
        api,
        node,
    ):
        phones = await austrian_pbx(api)
        await api.problem(422, "reserved_extension", "PUT",
                          "/v1/accounts/K500600/pbx/extensions/133",
                          {"name": "x", "site_block": WIEN[0]})  # fmt: skip
        await api.problem(422, "foreign_number", "PUT", "/v1/accounts/K500600/blocks/de",
                          {"number": "+4930123456", "range": "0-9", "mode": "pbx"})  # fmt: skip
        # Extension 110 is a German emergency number, an ordinary one in Austria.
        await api.ok("PUT", "/v1/accounts/K500600/pbx/extensions/110",
                     {"name": "Empfang", "site_block": WIEN[0]})  # fmt: skip
        state = await wait_applied(api, "K500600")
        dialplan = state["files"]["dialplan/tenant-k500600.conf"]
        assert "exten => 133,1,Gosub(k500600-outbound,emergency,1(133))" in dialplan
        assert "+49" not in dialplan and "exten => 115," not in dialplan

        for caller, dial, uri, site in [
            ("100", "133", "133", WIEN),
            ("200", "144", "144", GRAZ),
            ("200", "7654321", "+433167654321", GRAZ),
            ("100", "0316765432", "+43316765432", WIEN),
        ]:
            await call_reaches_carrier(clean_lab, node.carrier_port, phones[caller], dial,
                                       uri, site)  # fmt: skip


async def austrian_pbx(api: Api) -> dict[str, dict[str, Any]]:
    customer = "K500600"
    await api.ok("PUT", f"/v1/accounts/{customer}",
                 {"name": "Donau GmbH", "email": "it@donau.example", "language": "de"})  # fmt: skip
    await api.ok("PUT", f"/v1/accounts/{customer}/pbx")
    for block_id, number, (user, password) in (WIEN, GRAZ):
        await api.ok("PUT", f"/v1/accounts/{customer}/blocks/{block_id}", {
            "number": number, "range": "0-99", "mode": "pbx",
            "trunk": {"username": user, "password": password},
        })  # fmt: skip
    phones = {}
    for ext, block_id in (("100", WIEN[0]), ("200", GRAZ[0])):
        created = await api.ok("PUT", f"/v1/accounts/{customer}/pbx/extensions/{ext}",
                               {"name": f"Phone {ext}", "site_block": block_id})  # fmt: skip
        phones[ext] = created | {"port": free_port()}
    for block_id, _number, _trunk in (WIEN, GRAZ):
        await api.ok("PUT", f"/v1/accounts/{customer}/pbx/blocks/{block_id}",
                     {"default_target": "100"})  # fmt: skip
    return phones


async def call_reaches_carrier(
    lab: Lab, carrier_port: int, phone: dict[str, Any], dial: str, uri: str,
    site: tuple[str, str, tuple[str, str]],
) -> None:  # fmt: skip
    user, password = site[2]
    carrier = start_scenario(
        "carrier_answer_auth", remote_port=lab.sip_port, local_ip=CARRIER_HOST,
        local_port=carrier_port, variables={"trunk_user": user, "trunk_password": password},
    )  # fmt: skip
    call = await asyncio.to_thread(
        run_scenario, "call", remote_port=lab.sip_port, service=phone["sip_username"],
        username=phone["sip_username"], password=phone["sip_password"],
        local_port=phone["port"], variables={"dial": dial}, timeout=15,
    )  # fmt: skip
    received = await asyncio.to_thread(carrier.wait, 20)
    evidence = call.evidence() + "\n--- carrier ---\n" + received.evidence()
    invites = [m for m in received.messages if m.method == "INVITE"]
    assert invites and invites[0].first_line.startswith(f"INVITE sip:{uri}@"), evidence
    # Over the site's trunk (the carrier demanded and checked its credentials), with
    # the site's main number.
    assert received.ok and call.ok, evidence
    assert f"sip:{site[1]}0@" in invites[0].headers["from"], evidence
