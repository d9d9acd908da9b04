"""Shared pieces of the tests that apply config to the lab's Asterisk."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import Api, Lab, free_port

from provisioner.settings import Node, Secret

# The carrier (SBC) lives on its own loopback address, so identifying it by address
# never catches the phones, which all come from 127.0.0.1.
CARRIER_HOST = "127.0.0.2"


def lab_node(lab: Lab) -> Node:
    return Node(
        name="default", ami_host="127.0.0.1", ami_port=lab.ami_port,
        ami_username=lab.ami_user, ami_secret=Secret(lab.ami_secret),
        output_dir=lab.output_dir, carrier_host=CARRIER_HOST, carrier_port=free_port(),
    )  # fmt: skip


def clean_output(lab: Lab) -> None:
    for kind in ("pjsip", "dialplan"):
        for path in (lab.output_dir / kind).iterdir():
            if not path.name.startswith("00-"):
                path.unlink()
    lab.cli("module reload res_pjsip.so")
    lab.cli("dialplan reload")


async def wait_applied(api: Api, customer: str, timeout: float = 20) -> dict[str, Any]:
    """Until the PBX's latest revision is live and stays so (no change queued behind it)."""
    deadline = time.monotonic() + timeout
    while True:
        state: dict[str, Any] = await api.ok("GET", f"/v1/accounts/{customer}/pbx/config")
        if state["apply_state"] == "applied" and state["applied_revision"] == state["revision"]:
            await asyncio.sleep(0.3)
            if await api.ok("GET", f"/v1/accounts/{customer}/pbx/config") == state:
                return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{customer} not applied within {timeout} s: {state}")
        await asyncio.sleep(0.1)
