"""What every part of `make bench` shares: the lab, the service and its HTTP client, the
node built through the API, the block mover, the registered phones, and the figures'
helpers. The parts (`__main__`, `realtime`, `router`, `billing`) import from here, never
from each other."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import yaml
from sipp_peer import Running, run_scenario, start_scenario

from bench.sip import Caller, CarrierUas

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "asterisk-docker" / "lab"
PORTAL_KEY = "portal-dev-key"  # public dev key (config/dev.yaml)
PORTAL_KEY_SHA = "2c05b379ba481cd2be5f878419bb3a5f68a7a46e713e01ff472ce0be2e7391ba"
SECRETS_KEY = "ZGV2LW9ubHktcHVibGljLXNlY3JldHMta2V5LTMyYiE="
CARRIER = "127.0.0.2"
TARGETS = 5  # PBXs with a registered sipp phone that the moved blocks go to
FIRST_EXT = 200  # phones 200, 201, ... (the 1xx range holds service numbers 110, 112, ...)
OWNER = "K9000001"
ROUTER_IP = "127.0.0.3"  # the SIP router (Kamailio) of the bench's platforms


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": pct(values, 0.95),
        "max": max(values),
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Size:
    pbxes: int
    phones: int
    results: dict[str, Any] = field(default_factory=dict)


class Lab:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ami_port, self.sip_port = free_port(), free_port()

    def up(self, *extra: str) -> dict[str, Any]:
        shutil.rmtree(self.folder, ignore_errors=True)
        done = subprocess.run(
            [str(LAB), "--dir", str(self.folder), "up", "--ami-port", str(self.ami_port),
             "--sip-port", str(self.sip_port), *extra],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"the lab did not start (run `make test` once to build it):\n"
                             f"{done.stdout}{done.stderr}")  # fmt: skip
        self.state: dict[str, Any] = json.loads((self.folder / "lab.json").read_text())
        return dict(self.state)

    def up_again(self) -> None:
        """Start its Asterisk again (after a kill), on its own folder, ports and secrets."""
        done = subprocess.run(
            [str(LAB), "--dir", str(self.folder), "up", "--ami-port", str(self.ami_port),
             "--sip-port", str(self.sip_port)],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"the lab did not start again:\n{done.stdout}{done.stderr}")
        self.state = json.loads((self.folder / "lab.json").read_text())

    def down(self) -> None:
        """Stop it; its folder (config, logs) goes too unless BENCH_KEEP is set."""
        subprocess.run([str(LAB), "--dir", str(self.folder), "down"],
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def pid(self) -> int:
        return int(self.state["pid"])


class Service:
    """`provisioner serve` on a config of its own."""

    def __init__(
        self, work: Path, lab: Lab, db_url: str, carrier_port: int, pjsip: str = "files"
    ) -> None:
        self.work, self.lab, self.db_url, self.carrier_port = work, lab, db_url, carrier_port
        self.pjsip = pjsip
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, incremental: bool = True) -> None:
        path = self.work / "config.yaml"
        path.write_text(yaml.safe_dump(self.config(incremental=incremental)))
        log = (self.work / "service.log").open("ab")
        self.process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "provisioner"), "serve", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def config(self, *, incremental: bool) -> dict[str, Any]:
        s = self.lab.state
        return {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "public_base_url": f"http://127.0.0.1:{self.port}",
            "data_dir": str(self.work / "data"),
            "database": {"url": self.db_url, "pool_size": 10},
            "api_keys": [{"name": "portal", "role": "portal", "key_sha256": PORTAL_KEY_SHA}],
            "secrets": {"keys": [SECRETS_KEY]},
            "log": {"level": "WARNING"},
            "asterisk": {
                "incremental": incremental,
                "drift_check_seconds": 0,
                "nodes": [
                    {
                        "name": "default",
                        "ami_host": "127.0.0.1",
                        "ami_port": s["ami_port"],
                        "ami_username": s["ami_user"],
                        "ami_secret": s["ami_secret"],
                        "output_dir": s["output_dir"],
                        "carrier_host": CARRIER,
                        "carrier_port": self.carrier_port,
                        "file_group": s["file_group"],
                        "pjsip": self.pjsip,
                    }
                ],
            },
        }

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)
            self.process = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mail_dir(self) -> Path:
        return self.work / "data" / "mail"


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base
        self.errors_5xx = 0

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {PORTAL_KEY}"}
        async with self.session.request(method, self.base + path, json=body,
                                        headers=headers) as r:  # fmt: skip
            if r.status >= 500:
                self.errors_5xx += 1
            text = await r.text()
            return r.status, (json.loads(text) if text else None)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        for _ in range(5):  # a 503 with Retry-After under load: retry as a portal would
            status, answer = await self.call(method, path, body)
            if status == 503:
                await asyncio.sleep(0.5)
                continue
            if status >= 300:
                raise RuntimeError(f"{method} {path}: {status} {answer}")
            return answer
        raise RuntimeError(f"{method} {path}: still 503")

    async def metrics(self) -> dict[str, float]:
        async with self.session.get(self.base + "/metrics") as r:
            text = await r.text()
        found = {}
        for name, labels, value in re.findall(r"^(provisioner_\w+?)(?:_total)?\{(.*?)\} (\S+)$",
                                              text, re.M):  # fmt: skip
            found[f"{name}{{{labels}}}"] = float(value)
        return found


PJSIP = 'provisioner_reloads{module="res_pjsip.so",result="ok"}'
DIALPLAN = 'provisioner_reloads{module="pbx_config.so",result="ok"}'


def customer(i: int) -> str:
    return f"K1{i:05d}"


async def until(predicate: Any, within: float, what: str, pause: float = 0.05) -> Any:
    """The predicate's first truthy value (a plain or an async callable); TimeoutError
    naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(pause)


async def wait_service(client: Client) -> None:
    async def up() -> bool:
        try:
            async with client.session.get(client.base + "/healthz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await until(up, 60, "the service did not start")


async def all_applied(client: Client, customers: list[str], within: float) -> None:
    async def done() -> bool:
        for c in customers:
            state = await client.ok("GET", f"/v1/accounts/{c}/pbx/config")
            if state["apply_state"] != "applied" or state["applied_revision"] != state["revision"]:
                return False
        return True

    await until(done, within, "the node was not applied", pause=0.5)


async def build(client: Client, size: Size, keep: dict[str, str] | None = None) -> dict[str, str]:
    """Accounts, PBXs, a block each and the phones; returns the first phone's password
    per target PBX (and puts every phone's, by SIP user, in `keep`)."""
    passwords: dict[str, str] = {}
    gate = asyncio.Semaphore(8)

    async def pbx(i: int) -> None:
        c = customer(i)
        async with gate:
            account = {"name": f"Kunde {i}", "email": f"it@k{i}.example", "language": "de"}
            await client.ok("PUT", f"/v1/accounts/{c}", account)
            await client.ok("PUT", f"/v1/accounts/{c}/pbx")
            block = {"number": f"+49301{i:04d}", "range": "0-99", "mode": "pbx"}
            await client.ok("PUT", f"/v1/accounts/{c}/blocks/site-{i}", block)
        for ext in range(FIRST_EXT, FIRST_EXT + size.phones):
            async with gate:
                phone = await client.ok(
                    "PUT", f"/v1/accounts/{c}/pbx/extensions/{ext}",
                    {"name": f"Phone {ext}", "site_block": f"site-{i}"},
                )  # fmt: skip
            if ext == FIRST_EXT and i < TARGETS:
                passwords[c] = phone["sip_password"]
            if keep is not None:
                keep[f"{c.lower()}-{ext}"] = phone["sip_password"]
        async with gate:  # the default target must be one of the PBX's extensions
            block["default_target"] = str(FIRST_EXT)
            await client.ok("PUT", f"/v1/accounts/{c}/blocks/site-{i}", block)

    await asyncio.gather(*(pbx(i) for i in range(size.pbxes)))
    owner = {"name": "Hanse Eigner", "email": "it@hanse.example", "language": "de"}
    await client.ok("PUT", f"/v1/accounts/{OWNER}", owner)
    return passwords


class Mover:
    """Moves the owner's blocks to the target PBXs, one after another."""

    def __init__(self, client: Client, service: Service, lab: Lab, caller: Caller,
                 carrier: CarrierUas, ami: Any, phones: dict[str, int]) -> None:  # fmt: skip
        self.client, self.service, self.lab = client, service, lab
        self.caller, self.carrier, self.ami, self.phones = caller, carrier, ami, phones
        self.next_block = 0

    async def new_block(self, default_target: str | None = None) -> tuple[str, str]:
        """A block of the owner's; `default_target` for the owner's own PBX, if it has one."""
        j = self.next_block
        self.next_block += 1
        block = f"m{j:04d}"
        body: dict[str, Any] = {
            "number": f"+49402{j:04d}", "range": "0-9", "mode": "pbx",
            "trunk": {"username": f"hanse-{j}", "password": f"Trunk-{j}-secret"},
        }  # fmt: skip
        if default_target is not None:
            body["default_target"] = default_target
        await self.client.ok("PUT", f"/v1/accounts/{OWNER}/blocks/{block}", body)
        return block, f"+49402{j:04d}5"

    async def links(self, block: str, target: str) -> tuple[str, str]:
        """The assignment's confirm links; the target's PBX names where the block's
        numbers ring (its phone FIRST_EXT) while the assignment waits."""
        assignment = await self.client.ok("POST", f"/v1/blocks/{block}/assignment",
                                          {"target_customer": target})  # fmt: skip
        await self.client.ok("PUT", f"/v1/accounts/{target}/pbx/blocks/{block}",
                             {"default_target": str(FIRST_EXT)})  # fmt: skip
        found = []
        for side in ("owner", "target"):
            mail = await until(lambda side=side: self._mail(assignment["id"], side), 30,
                               f"no {side} mail for {block}", pause=0.02)  # fmt: skip
            found.append(mail)
        return found[0], found[1]

    async def _mail(self, assignment: str, side: str) -> str | None:
        for path in self.service.mail_dir.glob(f"*confirm_request.{assignment}.{side}*.eml"):
            message = message_from_bytes(path.read_bytes())
            for part in message.walk():
                if part.get_content_type() == "text/plain":
                    body = part.get_payload(decode=True).decode()  # type: ignore[union-attr]
                    match = re.search(r"https?://\S+/confirm/\S+", body)
                    if match:
                        return "/" + match.group(0).split("/", 3)[3]
        return None

    async def confirm(self, link: str) -> None:
        async with self.client.session.post(self.client.base + link) as r:
            if r.status >= 300:
                raise RuntimeError(f"confirm {link}: {r.status} {await r.text()}")

    async def move(self, i: int, *, outbound: bool) -> dict[str, float]:
        target = customer(i % TARGETS)
        t0 = time.monotonic()
        block, number = await self.new_block()
        owner_link, target_link = await self.links(block, target)
        await self.confirm(owner_link)
        debug(f"block and mails {time.monotonic() - t0:.2f} s")
        # -aa: the phone answers OPTIONS/NOTIFY it does not expect instead of aborting.
        phone = start_scenario("uas_ring", remote_port=self.lab.sip_port,
                               local_port=self.phones[target], timeout=60,
                               extra=["-aa"])  # fmt: skip
        rang = False
        try:
            await self.confirm(target_link)
            confirmed = time.time()
            await self.caller.until_rings(number, within=120)
            rang = True
        finally:
            if not rang:
                phone.process.terminate()
            t1 = time.monotonic()
            result = await asyncio.to_thread(_phone_done, phone)
            debug(f"phone done {time.monotonic() - t1:.2f} s")
            if not rang:
                print(f"    {number} did not ring {target}'s phone: {result.evidence()}")
        invite = next((m.time for m in result.messages
                       if m.direction == "received" and m.method == "INVITE"), None)  # fmt: skip
        if invite is None:
            raise RuntimeError(f"the phone of {target} saw no INVITE: {result.evidence()}")
        measured = {"ring": invite - confirmed}
        if measured["ring"] > 1 and os.environ.get("BENCH_DEBUG"):
            print(result.evidence())
        if outbound:
            trunk = f"{target.lower()}-trunk-{block}"
            dialed = f"+4989777{i:04d}"
            measured["outbound"] = await self.until_outbound(trunk, dialed, confirmed)
        return measured

    async def until_outbound(
        self, trunk: str, dialed: str, since: float, every: float = 0.1
    ) -> float:
        """Originate over the trunk every `every` s until the carrier sees the call;
        seconds from `since` (a time.time())."""
        deadline = time.monotonic() + 120
        pending: list[asyncio.Future[Any]] = []
        try:
            while time.monotonic() < deadline:
                # Not awaited: panoramisk waits for the OriginateResponse, which comes
                # only when the attempt ends; the carrier's receipt time is what counts.
                pending.append(asyncio.ensure_future(self.ami.send_action({
                    "Action": "Originate", "Channel": f"PJSIP/{dialed}@{trunk}",
                    "Application": "Hangup", "Async": "true", "Timeout": "5000",
                })))  # fmt: skip
                for _ in range(max(1, round(every / 0.01))):
                    seen = self.carrier.seen(dialed, since)
                    if seen is not None:
                        return seen - since
                    await asyncio.sleep(0.01)
        finally:
            for future in pending:
                future.cancel()
        raise TimeoutError(f"no outbound call over {trunk}")


def debug(text: str) -> None:
    if os.environ.get("BENCH_DEBUG"):
        print(f"      {time.time():.3f} {text}", flush=True)


def _phone_done(phone: Running) -> Any:
    return phone.wait(timeout=30)


async def register_phones(lab: Lab, passwords: dict[str, str]) -> dict[str, int]:
    """REGISTER each target PBX's first phone. A node busy with a res_pjsip reload
    answers late, and sipp's scenario trips over the answer to its own retransmission:
    tried up to three times."""
    ports = {}
    for c, password in passwords.items():
        port = free_port()
        for _ in range(3):
            result = await asyncio.to_thread(
                run_scenario, "register", remote_port=lab.sip_port, local_port=port,
                service=f"{c.lower()}-{FIRST_EXT}", username=f"{c.lower()}-{FIRST_EXT}",
                password=password,
                variables={"expires": "3600"},
            )  # fmt: skip
            if result.ok:
                break
            await asyncio.sleep(1)
        if not result.ok:
            raise RuntimeError(f"phone of {c} did not register: {result.evidence()}")
        ports[c] = port
    return ports


# --- Two nodes behind the SIP router -------------------------------------------------


@dataclass
class RouterProc:
    """The lab's Kamailio (`lab router-up`), in its own folder."""

    folder: Path
    db_url: str
    shm_mb: int
    sip_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    phone_port: int = field(default_factory=free_port)

    @property
    def rpc_url(self) -> str:
        return f"http://{ROUTER_IP}:{self.rpc_port}/RPC"

    def up(self) -> float:
        """Start it; returns the seconds until it answered RPC (its table loaded)."""
        started = time.monotonic()
        done = subprocess.run(
            [str(LAB), "--dir", str(self.folder), "router-up", "--router-ip", ROUTER_IP,
             "--router-port", str(self.sip_port), "--rpc-port", str(self.rpc_port),
             "--phone-port", str(self.phone_port),
             "--db-url", self.db_url, "--shm-mb", str(self.shm_mb)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"the router did not start:\n{done.stdout}{done.stderr}")
        return time.monotonic() - started

    def down(self) -> None:
        subprocess.run([str(LAB), "--dir", str(self.folder), "router-down"],
                       capture_output=True, timeout=60, check=False)  # fmt: skip

    def pids(self) -> list[int]:
        state = json.loads((self.folder / "router" / "router.json").read_text())
        leader = int(state["pid"])
        found = [leader]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == leader:
                    found.append(int(entry.name))
        return found


class RouterService(Service):
    """`provisioner serve` with two nodes (`default` and `node-b`) behind the router;
    with `standby`, node-b is the standby of `default`, and phones register through the
    router with their PBX's domain (<slug>.<phone_domain>)."""

    def __init__(
        self, work: Path, labs: list[Lab], db_url: str, router: RouterProc, *,
        standby: bool = False, phone_domain: str = "",
    ) -> None:  # fmt: skip
        super().__init__(work, labs[0], db_url, free_port())
        self.labs, self.router = labs, router
        self.standby, self.phone_domain = standby, phone_domain

    def config(self, *, incremental: bool) -> dict[str, Any]:
        config = super().config(incremental=incremental)
        nodes = []
        for name, lab in zip(("default", "node-b"), self.labs, strict=True):
            s = lab.state
            nodes.append({
                "name": name, "ami_host": "127.0.0.1", "ami_port": s["ami_port"],
                "ami_username": s["ami_user"], "ami_secret": s["ami_secret"],
                "output_dir": s["output_dir"], "carrier_host": CARRIER,
                "carrier_port": self.carrier_port, "file_group": s["file_group"],
                "sip_port": s["sip_port"],
                "pjsip": "files",  # the bench's labs (the realtime part starts its own)
                # Its carrier port: what comes from its phone port is a phone's.
                "router_host": f"{ROUTER_IP}:{self.router.sip_port}",
                "standby": "node-b" if self.standby and name == "default" else "",
            })  # fmt: skip
        config["asterisk"]["nodes"] = nodes
        config["router"] = {"rpc_url": self.router.rpc_url, "phone_domain": self.phone_domain}
        return config


async def reader(db_url: str) -> str:
    """The router's read-only login, as `provisioner router-reader` makes it."""
    from provisioner.db import router as db_router

    password = secrets.token_urlsafe(16)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await db_router.make_reader(conn, "kamailio", password)
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    return f"postgresql://kamailio:{password}@/{info['dbname']}?host={info['host']}"


async def build_on(
    client: Client, pbxes: int, phones: int, node: str, first: int
) -> dict[str, str]:
    """PBXs first .. first+pbxes-1 on `node`, a block and `phones` phones each; returns
    each PBX's first phone's password (shown once, when made)."""
    gate = asyncio.Semaphore(8)
    made = {}

    async def pbx(i: int) -> None:
        c = customer(i)
        async with gate:
            account = {"name": f"Kunde {i}", "email": f"it@k{i}.example", "language": "de"}
            await client.ok("PUT", f"/v1/accounts/{c}", account)
            await client.ok("PUT", f"/v1/accounts/{c}/pbx", {"node": node})
            block = {"number": f"+49301{i:04d}", "range": "0-99", "mode": "pbx"}
            await client.ok("PUT", f"/v1/accounts/{c}/blocks/site-{i}", block)
        for ext in range(FIRST_EXT, FIRST_EXT + phones):
            async with gate:
                body = {"name": f"Phone {ext}", "site_block": f"site-{i}"}
                phone = await client.ok("PUT", f"/v1/accounts/{c}/pbx/extensions/{ext}", body)
            if ext == FIRST_EXT:
                made[c] = phone["sip_password"]
        async with gate:  # the default target must be one of the PBX's extensions
            block["default_target"] = str(FIRST_EXT)
            await client.ok("PUT", f"/v1/accounts/{c}/blocks/site-{i}", block)

    await asyncio.gather(*(pbx(i) for i in range(first, first + pbxes)))
    return made


async def all_routed(client: Client, customers: list[str], within: float) -> None:
    async def done() -> bool:
        for c in customers:
            state = await client.ok("GET", f"/v1/accounts/{c}/pbx/config")
            if state["apply_state"] != "applied" or state["live"]["router"] != "routed":
                return False
        return True

    await until(done, within, "the platform was not applied and routed", pause=0.5)


@dataclass
class RouterPlatform:
    """Two fresh lab Asterisks, a fresh embedded PostgreSQL (migrated) and the lab's
    Kamailio in front, reading it through its own reader role (`router_platform`)."""

    work: Path
    labs: list[Lab]
    db_url: str
    router: RouterProc
    services: list[RouterService] = field(default_factory=list)

    def serve(self, *, standby: bool = False, phone_domain: str = "") -> RouterService:
        """`provisioner serve` with both nodes behind the router, started."""
        service = RouterService(self.work, self.labs, self.db_url, self.router,
                                standby=standby, phone_domain=phone_domain)  # fmt: skip
        self.services.append(service)
        service.start()
        return service


@contextlib.asynccontextmanager
async def router_platform(name: str, shm_mb: int) -> AsyncIterator[RouterPlatform]:
    """The platform of a part (`name` names its folders); stopped and removed at the
    end, whatever happened (its work folder kept with BENCH_KEEP)."""
    from provisioner.db import embedded
    from provisioner.db.migrate import migrate

    work = Path(tempfile.mkdtemp(prefix=f"prov-bench-{name}-"))
    labs = [Lab(Path(tempfile.gettempdir()) / f"prov-bench-{name}-node-{i}") for i in (1, 2)]
    pg_folder = Path(tempfile.mkdtemp(prefix="prov-bench-pg-", dir="/tmp"))
    db_url, server = embedded.start(pg_folder / "pg")
    platform = RouterPlatform(work, labs, db_url, RouterProc(work / "lab", "", shm_mb))
    try:
        for lab in labs:
            lab.up()
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await migrate(conn)
        platform.router.db_url = await reader(db_url)
        platform.router.up()
        yield platform
    finally:
        for service in platform.services:
            service.stop()
        platform.router.down()
        for lab in labs:
            lab.down()
        server.cleanup()
        shutil.rmtree(pg_folder, ignore_errors=True)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
