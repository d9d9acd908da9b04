"""Hostile text in every free-text field that reaches a config file, loaded by the real
Asterisk: it has exactly the objects, options, contexts and extensions that the same PBX
with plain names has. The property test (hypothesis) is seeded and bounded, so a run is
repeatable."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from fixtures_lab import Lab
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lab_helpers import clean_output
from panoramisk import Manager
from pbx_rows import CARRIER, PASSWORDS, two_site_pbx

from provisioner.asterisk import files
from provisioner.render.render import pbx_files
from provisioner.render.view import build

# Everything that means something in Asterisk config, and every kind of line break.
HOSTILE = st.one_of(
    st.text(
        alphabet=st.sampled_from(
            list("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00;[](),=>${}#\"'\\&|ab =")
        ),
        max_size=120,
    ),
    st.sampled_from(
        [
            "x\n[evil]\ntype=endpoint",
            "a\r\nallow=all",
            "#include /etc/passwd",
            "${SHELL(id)}",
            "x;comment",
            "exten => 666,1,System(id)",
            "[carrier-in]",
            "\n#exec /bin/sh",
            "a\u2028[evil]",
            "x" * 5000,
        ]
    ),
)


async def live_state(ami: Manager) -> dict[str, Any]:
    """Every endpoint with all its options, every context with its extensions."""
    endpoints: dict[str, dict[str, str]] = {}
    reply: Any = await ami.send_action({"Action": "PJSIPShowEndpoints"})
    for name in sorted(m.ObjectName for m in reply if m.get("Event") == "EndpointList"):
        if not name.startswith("k100200-"):
            continue
        detail: Any = await ami.send_action({"Action": "PJSIPShowEndpoint", "Endpoint": name})
        for event in detail:
            if event.get("Event") == "EndpointDetail":
                # Config only: not the state a call of another test may still change.
                state = ("ActionID", "Callerid", "DeviceState", "ActiveChannels")
                options = {k: str(v) for k, v in event.items() if k not in state}
                endpoints[name] = options
    plan: Any = await ami.send_action({"Action": "ShowDialPlan"})
    contexts: dict[str, set[tuple[str, str, str]]] = {}
    for m in plan:
        if m.get("Event") == "ListDialplan" and (
            str(m.get("Context")).startswith("k100200-") or m.get("Context") == "carrier-in"
        ):
            entry = (str(m.get("Extension")), str(m.get("Priority")), str(m.get("AppData")))
            contexts.setdefault(str(m.get("Context")), set()).add(entry)
    return {"endpoints": endpoints, "contexts": contexts}


def load(lab: Lab, texts: dict[str, str]) -> None:
    for path, text in texts.items():
        files.write_atomic(lab.output_dir, path, text, group=lab.file_group)
    lab.cli("module reload res_pjsip.so")
    lab.cli("dialplan reload")


def render(account: str, phone: str, group: str) -> dict[str, str]:
    pbx, used, extensions, groups = two_site_pbx()
    return pbx_files(
        build(pbx, account, used, [replace(e, name=phone) for e in extensions],
              [replace(g, name=group) for g in groups], PASSWORDS),
        CARRIER,
    )  # fmt: skip


async def test_hostile_names_add_nothing_asterisk_can_see(clean_lab: Lab, ami: Manager) -> None:
    load(clean_lab, render("Spree Logistik GmbH", "Anna", "Reception"))
    intended = await live_state(ami)
    assert len(intended["endpoints"]) == 6 and "k100200-internal" in intended["contexts"]
    loop = asyncio.get_running_loop()

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(account=HOSTILE, phone=HOSTILE, group=HOSTILE)
    def check(account: str, phone: str, group: str) -> None:
        load(clean_lab, render(account, phone, group))
        seen = asyncio.run_coroutine_threadsafe(live_state(ami), loop).result(30)
        assert seen == intended

    try:
        await asyncio.to_thread(check)
    finally:
        clean_output(clean_lab)
