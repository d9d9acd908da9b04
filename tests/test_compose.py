"""The platform as a compose stack, built and run for real: every image of
asterisk-docker/ built from Debian alone, the README's compose walk-through run as
written (read from the README) on ports of its own, then on the same stack carrier
calls through the router to a phone on each node and a block assigned across the two
nodes; `make compose-stop` keeps the data, a second `make compose-up` finds it and
leaves no dangling image, and `make compose-down` leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from ports import free_port
from sipp_peer import run_scenario, start_scenario

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "provisioner-test"
COMPOSE = ["docker-compose", "-p", PROJECT, "-f", str(ROOT / "asterisk-docker/compose.yaml")]
KEY = "portal-dev-key"  # config/dev.yaml's public development key, as in the image
CARRIER_HOST = "127.0.0.2"
ROUTER_HOST = "127.0.0.3"
MARKER = "<!-- compose-walk-through: tests/test_compose.py runs this block as written -->"


def run(args: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def call_api(port: int, method: str, path: str, body: Any = None, **headers: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
                 **headers},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (http://127.0.0.1)
        return json.loads(response.read() or b"null")


def docker_ids(kind: str, *filters: str) -> list[str]:
    args = ["docker", kind, "ls", "-q"] + (["-a"] if kind == "container" else [])
    for f in filters:
        args += ["--filter", f]
    found = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True)
    return found.stdout.split()


def leftovers(kind: str) -> list[str]:
    return docker_ids(kind, f"label=com.docker.compose.project={PROJECT}")


def walk_through() -> str:
    """The README's compose walk-through, exactly as a reader copies it."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(re.escape(MARKER) + r"\n```sh\n(.*?)\n```", readme, re.S)
    assert found, "the README has no compose walk-through block"
    return found.group(1)


@pytest.fixture
def stack_env(docker_engine: None) -> Iterator[dict[str, str]]:
    """The environment of the stack: free ports, a project of its own; anything left by
    an earlier run that died is taken down first, and this one's is taken down after."""
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "API_PORT": str(free_port()), "PG_PORT": str(free_port()),
        "NODE1_SIP_PORT": str(free_port()), "NODE1_AMI_PORT": str(free_port()),
        "NODE2_SIP_PORT": str(free_port()), "NODE2_AMI_PORT": str(free_port()),
        "ROUTER_PORT": str(free_port()), "ROUTER_RPC_PORT": str(free_port()),
        "CARRIER_HOST": CARRIER_HOST, "CARRIER_PORT": str(free_port()),
    }  # fmt: skip
    run([*COMPOSE, "down", "-v", "--remove-orphans"], env, 120)
    try:
        yield env
    finally:
        subprocess.run([*COMPOSE, "down", "-v", "--remove-orphans"], cwd=ROOT, env=env,
                       capture_output=True, timeout=120, check=False)  # fmt: skip


def wait_applied(api: int, customer: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state: dict[str, Any] = call_api(api, "GET", f"/v1/accounts/{customer}/pbx/config")
        if state["apply_state"] == "applied" and state["live"]["router"] in (None, "routed"):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.3)


def phone(api: int, customer: str, ext: str, body: dict[str, Any]) -> dict[str, Any]:
    made: dict[str, Any] = call_api(
        api, "PUT", f"/v1/accounts/{customer}/pbx/extensions/{ext}", body
    )
    return made


def carrier_call_rings(env: dict[str, str], node_port: int, who: dict[str, Any], dial: str) -> None:
    """`who` registers on its node; the carrier dials `dial` at the router; it answers."""
    local = free_port()
    registered = run_scenario(
        "register", remote_port=node_port, service=who["sip_username"],
        username=who["sip_username"], password=who["sip_password"], local_port=local,
        variables={"expires": "300"},
    )  # fmt: skip
    assert registered.ok, registered.evidence()
    answering = start_scenario("uas_answer", remote_port=node_port, local_port=local)
    call = run_scenario(
        "carrier_call", remote_ip=ROUTER_HOST, remote_port=int(env["ROUTER_PORT"]),
        local_ip=CARRIER_HOST, variables={"dial": dial},
    )  # fmt: skip
    answered = answering.wait(20)
    assert call.ok, call.evidence()
    assert answered.ok, answered.evidence()


def test_the_platform_in_compose_as_the_readme_walks_through_it(
    stack_env: dict[str, str],
) -> None:
    env = stack_env
    dangling_before = set(docker_ids("image", "dangling=true"))
    started = time.monotonic()
    walked = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walk_through()], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    output = walked.stdout + walked.stderr
    assert walked.returncode == 0, output[-6000:]
    assert output.count("applied: revision") == 2, output[-6000:]
    walked_in = time.monotonic() - started

    api = int(env["API_PORT"])
    node1, node2 = int(env["NODE1_SIP_PORT"]), int(env["NODE2_SIP_PORT"])
    # After the walk-through: B (K100200) is on node-2, the realtime node, and uses A's
    # Munich block. Now C (K300400, Hamburg) with a PBX on node-1, the other realtime node.
    account = {"name": "Alster Handel GmbH", "email": "it@alster.example", "language": "de"}
    call_api(api, "PUT", "/v1/accounts/K300400", account)
    call_api(api, "PUT", "/v1/accounts/K300400/pbx", {"node": "node-1"})
    call_api(api, "PUT", "/v1/accounts/K300400/blocks/ham-main",
             {"number": "+4940555666", "range": "0-99", "mode": "pbx"})  # fmt: skip
    call_api(api, "PUT", "/v1/accounts/K300400/blocks/ham-b",
             {"number": "+4940777888", "range": "0-9", "mode": "pbx"})  # fmt: skip
    emil = phone(api, "K300400", "300",
                 {"name": "Emil", "site_block": "ham-main", "did": "+49405556660"})  # fmt: skip
    # C's block ham-b, assigned across the nodes to B's PBX on node-2
    assignment = call_api(api, "POST", "/v1/blocks/ham-b/assignment",
                          {"target_customer": "K100200"})  # fmt: skip
    links = run([str(ROOT / "scripts/compose"), "links", assignment["id"]], env, 60).split()
    assert len(links) == 2, links
    for link in links:
        assert link.startswith(f"http://127.0.0.1:{api}/confirm/"), link
        request = urllib.request.Request(link, method="POST")  # noqa: S310 (checked above)
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 (checked above)
            pass
    dora_body = {"name": "Dora Hamburg", "site_block": "ham-b", "did": "+49407778880"}
    dora = phone(api, "K100200", "400", dora_body)
    assert wait_applied(api, "K300400")["node"] == "node-1"
    assert wait_applied(api, "K100200")["node"] == "node-2"

    carrier_call_rings(env, node1, emil, "+49405556660")  # node-1
    carrier_call_rings(env, node2, dora, "+49407778880")  # node-2, C's number
    # Both calls billed to C (its blocks), from both nodes' CDR spools: Dora's by B's PBX.
    deadline = time.monotonic() + 30
    while True:
        since = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
        usage = call_api(api, "GET", f"/v1/accounts/K300400/usage?from={since}")
        if usage["total"]["calls"] >= 2:
            break
        assert time.monotonic() < deadline, usage
        time.sleep(0.3)
    assert {(r["block_id"], r["pbx"]) for r in usage["usage"]} == {
        ("ham-main", "K300400"),
        ("ham-b", "K100200"),
    }, usage

    # Stop keeps every volume; up again finds the data, and leaves no dangling image.
    volumes = set(leftovers("volume"))
    declared = yaml.safe_load((ROOT / "asterisk-docker/compose.yaml").read_text())["volumes"]
    assert volumes == {f"{PROJECT}_{name}" for name in declared}, volumes
    run(["make", "compose-stop"], env, 300)
    assert docker_ids("container", f"label=com.docker.compose.project={PROJECT}",
                      "status=running") == []  # fmt: skip
    assert set(leftovers("volume")) == volumes
    run(["make", "compose-up"], env, 900)
    assert call_api(api, "GET", "/v1/accounts/K300400")["name"] == "Alster Handel GmbH"
    assert wait_applied(api, "K100200")["node"] == "node-2"
    carrier_call_rings(env, node2, dora, "+49407778880")
    dangling_after = set(docker_ids("image", "dangling=true"))
    assert dangling_after <= dangling_before, "compose-up left dangling images"

    run(["make", "compose-down"], env, 300)
    for kind in ("container", "volume", "network"):
        assert leftovers(kind) == [], f"{kind}s left after compose-down"
    print(f"walk-through (build and up included) {walked_in:.1f} s")
