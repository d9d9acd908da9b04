"""The lab's SIP router (Kamailio, `asterisk-docker/lab router-up`) for the tests, and
the two-node platform around it."""

from __future__ import annotations

import asyncio
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
from fixtures_lab import LAB, Lab
from fixtures_mail import Inbox
from fixtures_service import Api
from helpers import BLOCK, OWNER, OWNER_MAIL, TARGET, TARGET_MAIL, path_of, request_assignment
from lab_helpers import CARRIER_HOST, lab_node, lab_service, wait_applied
from ports import free_port
from sipp_peer import SipMessage, SipResult, run_scenario, start_scenario
from tier import refuse_in_fast_tier
from waiting import wait_until

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
    name: str = "router"  # the lab's first router; "router-2" one beside it
    phone_port: int = 0  # its SIP port for phones (0: one is chosen when it starts)

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
            "router-up", "--router-name", self.name, "--router-ip", ROUTER_IP,
            "--router-port", str(self.sip_port), "--rpc-port", str(self.rpc_port),
            "--phone-port", str(self.phone_port), "--db-url", self.db_url,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"the lab's router did not start:\n{done.stdout}{done.stderr}")

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.folder / self.name / "router.json").read_text())
        return state

    def processes(self) -> list[int]:
        """Every Kamailio process running this router's config (main and children)."""
        config = str(self.folder / self.name / "kamailio.cfg")
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
        done = self.command("router-down", "--router-name", self.name)
        assert done.returncode == 0, done.stdout + done.stderr

    def log(self) -> str:
        return (self.folder / self.name / "console.log").read_text(errors="replace")


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
async def running_router(
    tmp_path: Path, db_url: str, name: str = "router"
) -> AsyncIterator[RouterLab]:
    router = RouterLab(
        tmp_path / "router-lab", free_port(), free_port(), await reader_url(db_url), name,
        free_port(),
    )  # fmt: skip
    router.up()
    try:
        yield router
    finally:
        router.command("router-down", "--router-name", name)


def platform(
    settings: Settings,
    router: RouterLab,
    first: Lab,
    second: Lab,
    standby: str = "",
    beside: RouterLab | None = None,
) -> Settings:
    """Settings of two nodes (`default` on the first lab, `node-b` on the second) behind
    the router (and the one `beside` it, if any); with `standby`, node-b is the standby
    of `default`."""
    nodes = tuple(
        replace(
            lab_node(lab),
            name=name,
            sip_port=lab.sip_port,
            # The router's carrier port only: phones come through its phone port.
            router_host=",".join(
                f"{ROUTER_IP}:{r.sip_port}" for r in (router, beside) if r is not None
            ),
            standby=standby if name == "default" else "",
        )
        for name, lab in (("default", first), ("node-b", second))
    )
    return replace(
        settings,
        asterisk=replace(settings.asterisk, nodes=nodes, retry_seconds=1),
        router=Router(
            rpc_url=",".join(r.rpc_url for r in (router, beside) if r is not None),
            retry_seconds=1,
            phone_domain="pbx.lab",
        ),
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


def final_status(result: SipResult) -> int | None:
    """The first final answer a sipp scenario got (None: none)."""
    statuses = [s for s in result.received_statuses() if s >= 200]
    return statuses[0] if statuses else None


def sip_domain(customer: str) -> str:
    """A PBX's SIP domain on the test platform (router.phone_domain is pbx.lab)."""
    return f"{customer.lower()}.pbx.lab"


@dataclass(frozen=True)
class Phone:
    username: str
    password: str
    port: int


@dataclass
class Platform:
    api: Api
    settings: Settings
    router: RouterLab
    labs: dict[str, Lab]  # node name -> its lab
    phones: dict[str, Phone]  # "A" and "B": each PBX's phone 100

    def register(self, who: str, node: str) -> None:
        phone = self.phones[who]
        result = run_scenario(
            "register", remote_port=self.labs[node].sip_port, service=phone.username,
            username=phone.username, password=phone.password, local_port=phone.port,
            variables={"expires": "300"},
        )  # fmt: skip
        assert result.ok, result.evidence()

    def register_via_router(self, customer: str, phone: Phone, expires: int = 300) -> SipResult:
        """The phone registers at the router's phone port with its PBX's domain: the same
        configuration wherever its PBX is homed."""
        return run_scenario(
            "register", remote_ip=ROUTER_IP, remote_port=self.router.phone_port,
            service=phone.username, username=phone.username, password=phone.password,
            local_port=phone.port, variables={"expires": str(expires)},
            domain=sip_domain(customer),
        )  # fmt: skip

    async def call_rings(
        self, dial: str, who: str, node: str, via: RouterLab | None = None
    ) -> None:
        """The carrier calls `dial` through the router (or `via` another); `who`'s
        phone, registered on `node`, answers it (and nobody else gets it)."""
        self.register(who, node)
        await self.rings(dial, self.phones[who], "127.0.0.1", self.labs[node].sip_port, via)

    async def rings(
        self, dial: str, phone: Phone, host: str, port: int, via: RouterLab | None = None
    ) -> SipMessage:
        """The carrier calls `dial` through the router (or `via` another); the phone,
        registered at host:port (its node, or the router's phone port), answers it.
        Returns the INVITE the phone got."""
        answering = start_scenario("uas_answer", remote_ip=host, remote_port=port,
                                   local_port=phone.port, timeout=15)  # fmt: skip
        call = await asyncio.to_thread(self.carrier_calls, dial, via=via)
        answered = await asyncio.to_thread(answering.wait, 15)
        evidence = call.evidence() + "\n--- phone ---\n" + answered.evidence()
        assert call.ok, evidence
        assert answered.ok, evidence
        invite = next(m for m in answered.messages if m.method == "INVITE")
        assert "+4940999999" in invite.headers["from"], evidence
        return invite

    def carrier_calls(
        self,
        dial: str,
        local_ip: str = CARRIER_HOST,
        timeout: float = 10,
        via: RouterLab | None = None,
    ) -> SipResult:
        return run_scenario(
            "carrier_call", remote_ip=ROUTER_IP, remote_port=(via or self.router).sip_port,
            local_ip=local_ip, variables={"dial": dial}, timeout=timeout,
        )  # fmt: skip

    async def routed(self, customer: str, timeout: float = 20) -> dict[str, Any]:
        """Until the PBX is applied and the router sends its numbers to its node."""

        async def routed_state() -> dict[str, Any] | None:
            state: dict[str, Any] = await wait_applied(self.api, customer, timeout)
            return state if state["live"]["router"] == "routed" else None

        return await wait_until(routed_state, f"{customer} not routed", timeout)


async def put_phone(api: Api, customer: str, block: str) -> Phone:
    made = await api.ok("PUT", f"/v1/accounts/{customer}/pbx/extensions/100",
                        {"name": f"Phone of {customer}", "site_block": block})  # fmt: skip
    return Phone(made["sip_username"], made["sip_password"], free_port())


@contextlib.asynccontextmanager
async def platform_of(
    settings: Settings, first: Lab, second: Lab, tmp_path: Path, standby: str = ""
) -> AsyncIterator[Platform]:
    """A on node `default` (the first lab), B on `node-b` (the second), the router in
    front; each PBX with its phone 100 and its block's numbers routed."""
    async with (
        running_router(tmp_path, settings.database.url.value) as router,
        platform_behind(settings, router, first, second, standby) as scene,
    ):
        yield scene


@contextlib.asynccontextmanager
async def platform_behind(
    settings: Settings,
    router: RouterLab,
    first: Lab,
    second: Lab,
    standby: str = "",
    beside: RouterLab | None = None,
) -> AsyncIterator[Platform]:
    """As platform_of, behind a router that is already running (and the one `beside`
    it)."""
    both = platform(settings, router, first, second, standby, beside)
    async with lab_service(both, first, nodes=both.asterisk.nodes) as (api, _):
        for customer, name, mail, node, block, number in (
            (OWNER, "Isar Logistik GmbH", OWNER_MAIL, "default", BLOCK, "+4989123456"),
            (TARGET, "Spree Logistik GmbH", TARGET_MAIL, "node-b", "ber-main", "+4930123456"),
        ):
            await api.ok("PUT", f"/v1/accounts/{customer}",
                         {"name": name, "email": mail, "language": "en"})  # fmt: skip
            await api.ok("PUT", f"/v1/accounts/{customer}/pbx", {"node": node})
            body = {"number": number, "range": "0-99", "mode": "pbx"}
            await api.ok("PUT", f"/v1/accounts/{customer}/blocks/{block}", body)
        phones = {
            "A": await put_phone(api, OWNER, BLOCK),
            "B": await put_phone(api, TARGET, "ber-main"),
        }
        for customer, block, number in (
            (OWNER, BLOCK, "+4989123456"),
            (TARGET, "ber-main", "+4930123456"),
        ):
            body = {"number": number, "range": "0-99", "mode": "pbx", "default_target": "100"}
            await api.ok("PUT", f"/v1/accounts/{customer}/blocks/{block}", body)
        scene = Platform(api, both, router, {"default": first, "node-b": second}, phones)
        await scene.routed(OWNER)
        await scene.routed(TARGET)
        yield scene


async def assign_to_b(scene: Platform, inbox: Inbox) -> None:
    _, owner_link, target_link = await request_assignment(scene.api, inbox)
    # B names where the block's numbers ring in its PBX, while the assignment waits.
    await scene.api.ok(
        "PUT", f"/v1/accounts/{TARGET}/pbx/blocks/{BLOCK}", {"default_target": "100"}
    )
    assert (await scene.api.client.post(path_of(owner_link))).status == 200
    assert (await scene.api.client.post(path_of(target_link))).status == 200
