"""The lab's SIP router (Kamailio, `asterisk-docker/lab router-up`) for the tests, and
the two-node platform around it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import LAB, Lab, free_port
from lab_helpers import lab_node
from tier import refuse_in_fast_tier

from provisioner.db import router as db_router
from provisioner.domain.numbers import routing_candidates
from provisioner.settings import Node, Router, Settings

# Every party has its own loopback address: phones 127.0.0.1, the carrier 127.0.0.2
# (lab_helpers.CARRIER_HOST), the router 127.0.0.3, a stranger 127.0.0.5.
ROUTER_IP = "127.0.0.3"
STRANGER_IP = "127.0.0.5"


@dataclass(frozen=True)
class RouterLab:
    folder: Path
    sip_port: int
    rpc_port: int
    db_url: str

    @property
    def rpc_url(self) -> str:
        return f"http://{ROUTER_IP}:{self.rpc_port}/RPC"

    def command(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(LAB), "--dir", str(self.folder), *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def up(self) -> None:
        refuse_in_fast_tier("Kamailio")
        done = self.command(
            "router-up", "--router-ip", ROUTER_IP, "--router-port", str(self.sip_port),
            "--rpc-port", str(self.rpc_port), "--db-url", self.db_url,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"the lab's router did not start:\n{done.stdout}{done.stderr}")

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.folder / "router" / "router.json").read_text())
        return state

    def processes(self) -> list[int]:
        """Every Kamailio process running this router's config (main and children)."""
        config = str(self.folder / "router" / "kamailio.cfg")
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if entry.name.isdigit() and config.encode() in cmdline and b"unshare" not in cmdline[0]:
                found.append(int(entry.name))
        return found

    def kill(self) -> None:
        """kill -9 of the router's main process alone, no clean stop: its children must
        go with it (its own PID namespace), as after a crash. Returns once every
        process of it is gone (an exiting one, its command line already empty, too)."""
        before = self.processes()
        os.kill(int(self.state()["pid"]), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.processes() or any(alive(pid) for pid in before):
            assert time.monotonic() < deadline, f"Kamailio left running: {self.processes()}"
            time.sleep(0.02)

    def down(self) -> None:
        done = self.command("router-down")
        assert done.returncode == 0, done.stdout + done.stderr

    def log(self) -> str:
        return (self.folder / "router" / "console.log").read_text(errors="replace")


def alive(pid: int) -> bool:
    """The process exists and is no zombie (the lab's processes outlive their parent,
    the `lab` command that started them, so nobody here reaps them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def reader_url(db_url: str) -> str:
    """The test database's URL for the router's own role (read router_numbers only)."""
    password = "router-test-reader"
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await db_router.make_reader(conn, "provisioner_router_test", password)
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info.update(user="provisioner_router_test", password=password)
    uri = f"postgresql://{info['user']}:{password}@/{info['dbname']}"
    if "host" in info:
        uri += f"?host={info['host']}"
    if "port" in info:
        uri += ("&" if "?" in uri else "?") + f"port={info['port']}"
    return uri


@contextlib.asynccontextmanager
async def running_router(tmp_path: Path, db_url: str) -> AsyncIterator[RouterLab]:
    router = RouterLab(tmp_path / "router-lab", free_port(), free_port(), await reader_url(db_url))
    router.up()
    try:
        yield router
    finally:
        router.command("router-down")


def platform(settings: Settings, router: RouterLab, first: Lab, second: Lab) -> Settings:
    """Settings of two nodes (`default` on the first lab, `node-b` on the second) behind
    the router."""
    nodes = tuple(
        replace(lab_node(lab), name=name, sip_port=lab.sip_port, router_host=ROUTER_IP)
        for name, lab in (("default", first), ("node-b", second))
    )
    return replace(
        settings,
        asterisk=replace(settings.asterisk, nodes=nodes, retry_seconds=1),
        router=Router(rpc_url=router.rpc_url, retry_seconds=1),
    )


def node_named(settings: Settings, name: str) -> Node:
    node = settings.node(name)
    assert node is not None
    return node


def rpc(router: RouterLab, method: str, *params: Any) -> Any:
    """One JSON-RPC call to the router, as an operator would make it (curl)."""
    import urllib.error
    import urllib.request

    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1})
    request = urllib.request.Request(router.rpc_url, data=body.encode(), method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:  # a JSON-RPC error has the HTTP status of its code
        return json.loads(error.read())


def routed_uri(router: RouterLab, number: str) -> str | None:
    """Where the router sends a call to `number`: the keys it tries, as its config does
    (longest prefix first), read over RPC."""
    for key in routing_candidates(number):
        found = rpc(router, "htable.get", "numbers", key)
        value = found.get("result", {}).get("item", {}).get("value")
        if value is not None:
            return str(value)
    return None
