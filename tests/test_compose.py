"""The dockerized lab, built and run for real: every image of asterisk-docker/ built
from Debian alone, the compose stack up on ports of its own, a PBX applied to the
compose Asterisk through the stack's API, a sipp phone registered there and called from
the carrier's address, then `down` leaves no container, volume or network behind."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from sipp_peer import run_scenario, start_scenario

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "provisioner-test"
COMPOSE = ["docker-compose", "-p", PROJECT, "-f", str(ROOT / "asterisk-docker/compose.yaml")]
KEY = "portal-dev-key"  # config/dev.yaml's public development key, as in the image
CARRIER_HOST = "127.0.0.2"


def run(args: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def call_api(port: int, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (http://127.0.0.1)
        return json.loads(response.read() or b"null")


def leftovers(kind: str) -> list[str]:
    found = subprocess.run(
        ["docker", kind, "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        + (["-a"] if kind == "container" else []),
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return found.stdout.split()


@pytest.fixture
def stack_env(docker_engine: None) -> Iterator[dict[str, str]]:
    """The environment of the stack: free ports, a fresh AMI secret; anything left by an
    earlier run that died is taken down first, and this one's is taken down after."""
    env = {
        **os.environ,
        "AMI_SECRET": secrets.token_hex(16),
        "AMI_PORT": str(free_port()), "SIP_PORT": str(free_port()),
        "PG_PORT": str(free_port()), "API_PORT": str(free_port()),
        "CARRIER_HOST": CARRIER_HOST, "CARRIER_PORT": str(free_port()),
        "COMPOSE_PROJECT_NAME": PROJECT,
    }  # fmt: skip
    run([*COMPOSE, "down", "-v"], env, 120)
    try:
        yield env
    finally:
        subprocess.run([*COMPOSE, "down", "-v"], cwd=ROOT, env=env, capture_output=True,
                       timeout=120, check=False)  # fmt: skip


def test_the_compose_stack_applies_a_pbx_whose_phone_rings_from_the_carrier(
    stack_env: dict[str, str],
) -> None:
    env = stack_env
    run([str(ROOT / "scripts/compose"), "build"], env, 900)
    started = time.monotonic()
    run([*COMPOSE, "up", "-d"], env, 300)
    api = int(env["API_PORT"])
    deadline = time.monotonic() + 120
    while True:
        try:
            assert call_api(api, "GET", "/readyz") == {"status": "ready"}
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, run([*COMPOSE, "logs", "--tail", "40"], env, 60)
            time.sleep(0.5)
    ready = time.monotonic() - started

    account = {"name": "Spree Logistik GmbH", "email": "it@spree.example", "language": "de"}
    call_api(api, "PUT", "/v1/accounts/K100200", account)
    call_api(api, "PUT", "/v1/accounts/K100200/pbx")
    call_api(api, "PUT", "/v1/accounts/K100200/blocks/ber-main",
             {"number": "+4930123456", "range": "0-99", "mode": "pbx"})  # fmt: skip
    anna = call_api(api, "PUT", "/v1/accounts/K100200/pbx/extensions/100",
                    {"name": "Anna", "site_block": "ber-main", "did": "+49301234560"})  # fmt: skip
    deadline = time.monotonic() + 30
    while (state := call_api(api, "GET", "/v1/accounts/K100200/pbx/config"))[
        "apply_state"
    ] != "applied":
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    # (no SIP router in front of this node: no router state)
    assert state["live"] == {
        "dialplan": state["revision"], "pjsip": state["revision"],
        "router": None, "router_error": None,
    }  # fmt: skip

    sip = int(env["SIP_PORT"])
    phone_port = free_port()
    registered = run_scenario(
        "register", remote_port=sip, service=anna["sip_username"],
        username=anna["sip_username"], password=anna["sip_password"], local_port=phone_port,
        variables={"expires": "300"},
    )  # fmt: skip
    assert registered.ok, registered.evidence()
    answering = start_scenario("uas_answer", remote_port=sip, local_port=phone_port)
    call = run_scenario("carrier_call", remote_port=sip, local_ip=CARRIER_HOST,
                        variables={"dial": "+49301234560"})  # fmt: skip
    answered = answering.wait(20)
    assert call.ok, call.evidence()
    assert answered.ok, answered.evidence()

    run([*COMPOSE, "down", "-v"], env, 120)
    for kind in ("container", "volume", "network"):
        assert leftovers(kind) == [], f"{kind}s left after down -v"
    print(f"compose stack ready {ready:.1f} s after up")
