"""`make bench` (`--part router`): two Asterisk nodes behind the SIP router (Kamailio).

One run, on a fresh embedded PostgreSQL, two fresh lab Asterisks, the lab's Kamailio
and the service (`provisioner serve`):

1. the platform: two nodes of P PBXs x N phones (100 x 100 by default), built through
   the API; A's PBX (the blocks' owner) on node 1, the target PBXs on node 2. For each
   of `moves` blocks: time from the second confirmation's HTTP response until a
   carrier call sent to the router rings the target PBX's registered sipp phone on
   node 2; then from the reset's response until it rings A's phone on node 1 again;
2. the router's added call-setup time: INVITE -> 180 from the same phone, sent to the
   router and straight to the node, alternating, in the same run;
3. a table of a million numbers (10,000 blocks of 100, written to router_blocks
   directly: building 10,000 blocks through the API would measure the API): Kamailio's
   start until it answers and until the first call routes right, its memory, the time
   one block's change takes to go live (a block of 100 numbers, and one of 10,000: its
   router keys set and read back), and calls per
   second through the router with 0 misrouted while 100 blocks move between two SIP
   listeners standing in for the nodes (they answer every INVITE 486 and note it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import secrets
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from sipp_peer import Running, run_scenario, start_scenario

from bench.common import (
    CARRIER,
    FIRST_EXT,
    OWNER,
    ROUTER_IP,
    Client,
    Lab,
    Mover,
    RouterProc,
    all_routed,
    build_on,
    free_port,
    pct,
    router_platform,
    rss_mb,
    summary,
    until,
    wait_service,
)
from bench.report import report_part, rows_table
from bench.sip import Caller, CarrierUas, UdpEndpoint, bind_udp, close_udp, parse_headers

MEGA_BLOCKS = 10_000  # x 100 numbers


@dataclass
class Phone:
    """A PBX's first phone: registered (a sipp REGISTER) only while a call should ring it,
    so a call that reaches the other node meanwhile fails at once instead of ringing a
    phone nobody answers."""

    lab: Lab
    customer: str
    password: str
    port: int = field(default_factory=free_port)

    async def register(self, expires: int = 3600) -> None:
        """REGISTER (or, with 0, unregister). A node busy with a res_pjsip reload (a
        moved block's trunk) answers late, and sipp's scenario trips over the answer to
        its own retransmission: tried up to three times."""
        user = f"{self.customer.lower()}-{FIRST_EXT}"
        for _ in range(3):
            result = await asyncio.to_thread(
                run_scenario, "register", remote_port=self.lab.sip_port, local_port=self.port,
                service=user, username=user, password=self.password,
                variables={"expires": str(expires)},
            )  # fmt: skip
            if result.ok:
                return
            await asyncio.sleep(1)
        raise RuntimeError(f"phone of {self.customer}: REGISTER failed: {result.evidence()}")

    def ringing(self) -> Running:
        return start_scenario("uas_ring", remote_port=self.lab.sip_port, local_port=self.port,
                              timeout=60, extra=["-aa"])  # fmt: skip


def invite_time(phone: Running) -> float:
    result = phone.wait(timeout=30)
    invite = next((m.time for m in result.messages
                   if m.direction == "received" and m.method == "INVITE"), None)  # fmt: skip
    if invite is None:
        raise RuntimeError(f"the phone saw no INVITE: {result.evidence()}")
    return invite


async def across_nodes(
    client: Client, mover: Mover, caller: Caller, owner: Phone, targets: list[Phone], count: int
) -> dict[str, Any]:
    """Blocks of A (node 1) assigned to PBXs on node 2, then reset: ring times."""
    there, back = [], []
    for i in range(count + 1):  # the first is a warm-up, not counted
        target = targets[i % len(targets)]
        block, number = await mover.new_block(default_target=str(FIRST_EXT))
        await all_routed(client, [OWNER], 60)
        owner_link, target_link = await mover.links(block, target.customer)
        await mover.confirm(owner_link)
        await target.register()
        phone = target.ringing()
        await mover.confirm(target_link)
        confirmed = time.time()
        await caller.until_rings(number, within=60)
        ring = await asyncio.to_thread(invite_time, phone) - confirmed
        await target.register(expires=0)
        await all_routed(client, [OWNER, target.customer], 60)
        await owner.register()
        phone = owner.ringing()
        status, _ = await client.call("DELETE", f"/v1/blocks/{block}/assignment")
        assert status == 200, status
        reset = time.time()
        await caller.until_rings(number, within=60)
        ring_back = await asyncio.to_thread(invite_time, phone) - reset
        await owner.register(expires=0)
        if i:
            there.append(ring)
            back.append(ring_back)
        print(f"    move {i}/{count}{' (warm-up)' if not i else ''}: node 2 rings after"
              f" {ring * 1000:.0f} ms, back on node 1 after {ring_back * 1000:.0f} ms",
              flush=True)  # fmt: skip
    return {"assigned_ring_s": summary(there), "reset_ring_s": summary(back)}


async def overhead(
    labs: list[Lab], router: RouterProc, phone: Phone, number: str, samples: int
) -> dict[str, Any]:
    """INVITE -> 180 of one phone on node 2, through the router and straight."""
    via_router = Caller(CARRIER, free_port(), router.sip_port, ROUTER_IP)
    direct = Caller(CARRIER, free_port(), labs[1].sip_port)
    await via_router.start()
    await direct.start()
    await phone.register()
    times: dict[str, list[float]] = {"router": [], "direct": []}
    try:
        for i in range(samples * 2 + 2):
            kind, caller = ("router", via_router) if i % 2 else ("direct", direct)
            ringing = phone.ringing()
            took = await caller.setup_time(number)
            await asyncio.to_thread(ringing.wait, 30)
            if took is None:
                raise RuntimeError(f"{number} did not ring ({kind})")
            if i >= 2:  # the first pair warms up
                times[kind].append(took)
    finally:
        via_router.close()
        direct.close()
    added = statistics.median(times["router"]) - statistics.median(times["direct"])
    return {
        "router_s": summary(times["router"]),
        "direct_s": summary(times["direct"]),
        "added_median_ms": added * 1000,
    }


# --- A million numbers ------------------------------------------------------------------


async def fill(db_url: str, nodes: dict[str, str]) -> tuple[list[list[str]], list[tuple[str, ...]]]:
    """10,000 blocks of 100 numbers in router_blocks, alternating between the nodes, and
    a block of 10,000 numbers on node-1 (the last): each block's numbers and keys."""
    from provisioner.db import router as db_router
    from provisioner.domain.numbers import Span, routing_keys

    blocks = [[f"+4950{b:05d}{n:02d}" for n in range(100)] for b in range(MEGA_BLOCKS)]
    blocks.append([f"+4951000{n:04d}" for n in range(10_000)])
    keys = [
        tuple(routing_keys([Span(int(b[0][1:]), int(b[-1][1:]), len(b[0]) - 1)])) for b in blocks
    ]
    names = sorted(nodes)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("DELETE FROM router_blocks")
        async with conn.transaction():
            await db_router.set_nodes(conn, nodes, _now())
        async with (
            conn.cursor() as cur,
            cur.copy(
                "COPY router_blocks (block_id, node, pbx_id, keys, updated_at) FROM STDIN"
            ) as copy,
        ):
            for b, block_keys in enumerate(keys):
                await copy.write_row((f"mega-{b}", names[b % 2], None, list(block_keys), _now()))
    return blocks, keys


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


@dataclass
class Blaster:
    """INVITEs to the router at a steady rate; each final answer (the fake node's 486,
    relayed) is ACKed and counted."""

    port: int
    router_port: int
    sent: dict[str, tuple[float, str]] = field(default_factory=dict)  # call-id: (time, number)
    answered: dict[str, float] = field(default_factory=dict)
    _endpoint: UdpEndpoint | None = None

    async def start(self) -> None:
        self._endpoint = await bind_udp(CARRIER, self.port)
        self._reader = asyncio.create_task(self._read())

    def close(self) -> None:
        close_udp(self._endpoint, self._reader)

    def invite(self, number: str) -> None:
        assert self._endpoint and self._endpoint.transport
        call_id = secrets.token_hex(8)
        text = self._request("INVITE", number, call_id, "")
        self.sent[call_id] = (time.time(), number)
        self._endpoint.transport.sendto(text.encode(), (ROUTER_IP, self.router_port))

    def _request(self, method: str, number: str, call_id: str, to_tag: str) -> str:
        to = f"<sip:{number}@{ROUTER_IP}>" + (f";tag={to_tag}" if to_tag else "")
        return (
            f"{method} sip:{number}@{ROUTER_IP}:{self.router_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CARRIER}:{self.port};branch=z9hG4bK{call_id}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:carrier@{CARRIER}>;tag=c{call_id}\r\n"
            f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n"
            f"Contact: <sip:carrier@{CARRIER}:{self.port}>\r\nContent-Length: 0\r\n\r\n"
        )

    async def _read(self) -> None:
        assert self._endpoint and self._endpoint.transport
        while True:
            text, _ = await self._endpoint.queue.get()
            first, headers = parse_headers(text)
            call_id = headers.get("call-id", "")
            if not first.startswith("SIP/2.0") or call_id not in self.sent:
                continue
            if int(first.split()[1]) >= 300 and call_id not in self.answered:
                self.answered[call_id] = time.time()
                to_tag = headers.get("to", "").partition("tag=")[2]
                ack = self._request("ACK", self.sent[call_id][1], call_id, to_tag)
                self._endpoint.transport.sendto(ack.encode(), (ROUTER_IP, self.router_port))


async def a_million(
    db_url: str, router: RouterProc, moves: int, rate: int, seconds: float
) -> dict[str, Any]:
    from provisioner.db.router import Change
    from provisioner.router.rpc import Router
    from provisioner.router.sync import push

    results: dict[str, Any] = {}
    fakes = {name: CarrierUas("127.0.0.1", free_port()) for name in ("node-1", "node-2")}
    for fake in fakes.values():
        await fake.start()
    uris = {name: f"sip:127.0.0.1:{fake.port}" for name, fake in fakes.items()}
    started = time.monotonic()
    blocks, keys = await fill(db_url, uris)
    # The harness holds the million numbers itself; without this, the collector's full
    # passes over them (about 16 ms each, every few switches) were counted as the
    # router's switch time, a pause the service (which holds no such list) does not have.
    gc.freeze()
    results["fill_s"] = time.monotonic() - started
    router.down()
    blaster = Blaster(free_port(), router.sip_port)
    await blaster.start()
    try:
        # Kamailio loads the table before it answers anything.
        since = time.time()
        results["start_until_rpc_s"] = router.up()
        probe = blocks[4321][17]  # on node-2 (odd block)

        async def routed() -> bool:
            blaster.invite(probe)
            await asyncio.sleep(0.01)
            return fakes["node-2"].seen(probe, since) is not None

        await until(routed, 60, "the restarted router does not route", pause=0.0)
        results["start_until_routed_s"] = time.time() - since
        pids = router.pids()
        results["kamailio_rss_mb"] = sum(rss_mb(p) for p in pids)
        results["kamailio_rss_mb_main"] = rss_mb(pids[0])
        results["kamailio_processes"] = len(pids)
        async with Router(router.rpc_url, timeout_ms=30_000) as r:
            shm = await r.call("core.shmmem", "m")
            # ("m": in MB)
            results["kamailio_shm_used_mb"] = float(shm["used"]) if isinstance(shm, dict) else None
            # One change: a block of 100 numbers to the other node, set and read back.
            owner = {i: "node-1" if i % 2 == 0 else "node-2" for i in range(len(blocks))}
            windows: dict[str, list[tuple[float, float, str, str]]] = {}

            async def move(i: int) -> float:
                old, new = owner[i], "node-2" if owner[i] == "node-1" else "node-1"
                change = Change(f"mega-{i}", 0, new, keys[i], 0, old, keys[i])
                t0 = time.time()
                await push(r, change, uris[new])
                t1 = time.time()
                owner[i] = new
                for n in blocks[i]:
                    windows.setdefault(n, []).append((t0, t1, old, new))
                return t1 - t0

            single = [await move(i) for i in range(0, 100, 2)]  # 50 changes, quiet router
            results["one_change_s"] = summary(single)
            # The block of 10,000 numbers, moved back and forth the same way.
            results["big_change_s"] = summary([await move(MEGA_BLOCKS) for _ in range(10)])
            # Calls at `rate` per second for `seconds`, while `moves` blocks move.
            movers = list(range(1, 2 * moves, 2))
            hot = [n for i in movers for n in blocks[i][:10]]
            cold = [blocks[i][j] for i in range(200, 400) for j in range(0, 100, 10)]
            blaster.sent.clear()
            blaster.answered.clear()
            for fake in fakes.values():
                fake.invites.clear()
                fake.call_ids.clear()
            began = time.time()

            async def calls() -> None:
                count = int(rate * seconds)
                for k in range(count):
                    blaster.invite(random.choice(hot if k % 2 else cold))
                    await asyncio.sleep(max(0.0, began + (k + 1) / rate - time.time()))

            async def moving() -> list[float]:
                took = []
                for i in movers:
                    took.append(await move(i))
                    await asyncio.sleep(max(0.0, seconds / moves - took[-1]))
                return took

            _, under_load = await asyncio.gather(calls(), moving())
            await asyncio.sleep(2)  # the last answers
    finally:
        blaster.close()
        for fake in fakes.values():
            fake.close()
    elapsed = max(blaster.answered.values(), default=began) - began
    # A call counts where its INVITE first arrived (retransmissions of one transaction
    # rightly go where the first went).
    first_arrival: dict[str, tuple[float, str, str]] = {}
    for name, fake in fakes.items():
        for (when, uri), call_id in zip(fake.invites, fake.call_ids, strict=True):
            if call_id not in first_arrival or when < first_arrival[call_id][0]:
                first_arrival[call_id] = (when, uri, name)
    arrived = list(first_arrival.values())
    misrouted = 0
    for when, uri, name in arrived:
        number = uri.split(":", 1)[1].split("@", 1)[0]
        if not _right(name, number, when, windows, blocks):
            misrouted += 1
    setups = [blaster.answered[c] - t for c, (t, _) in blaster.sent.items()
              if c in blaster.answered]  # fmt: skip
    results["load"] = {
        "calls_sent": len(blaster.sent),
        "answered": len(blaster.answered),
        "calls_per_s": len(blaster.answered) / elapsed if elapsed > 0 else 0,
        "arrived_at_nodes": len(arrived),
        "misrouted": misrouted,
        "moves": len(under_load),
        "move_under_load_s": summary(under_load),
        "setup_p99_ms": pct(setups, 0.99) * 1000 if setups else None,
    }  # fmt: skip
    return results


def _right(
    node: str, number: str, when: float, windows: dict[str, list[tuple[float, float, str, str]]],
    blocks: list[list[str]],
) -> bool:  # fmt: skip
    """Did the INVITE arriving at `when` reach the node that had the number then? During
    a switch (set .. read back) either side is right."""
    block = int(number[5:10])
    owner = "node-1" if block % 2 == 0 else "node-2"
    for t0, t1, old, new in windows.get(number, []):
        if when < t0:
            return node == owner
        if when <= t1:
            return node in (old, new)
        owner = new
    return node == owner


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"pbxes_per_node": args.router_pbxes, "phones": args.router_phones}
    async with router_platform("router", args.router_shm_mb) as platform:
        labs, router, db_url = platform.labs, platform.router, platform.db_url
        service = platform.serve()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            client = Client(session, service.base)
            await wait_service(client)
            began = time.monotonic()
            half = args.router_pbxes
            first = await build_on(client, half, args.router_phones, "default", 0)
            second = await build_on(client, half, args.router_phones, "node-b", half)
            owner = {"name": "Hanse Eigner", "email": "it@hanse.example", "language": "de"}
            await client.ok("PUT", f"/v1/accounts/{OWNER}", owner)
            await client.ok("PUT", f"/v1/accounts/{OWNER}/pbx", {"node": "default"})
            own = {"number": "+4989700", "range": "0-99", "mode": "pbx"}
            await client.ok("PUT", f"/v1/accounts/{OWNER}/blocks/own", own)
            made = await client.ok("PUT", f"/v1/accounts/{OWNER}/pbx/extensions/{FIRST_EXT}",
                                   {"name": "Hanse", "site_block": "own"})  # fmt: skip
            await all_routed(client, [*first, *second, OWNER], 1800)
            results["build_s"] = time.monotonic() - began
            print(f"  built 2 x {half} PBXs x {args.router_phones} phones in"
                  f" {results['build_s']:.0f} s", flush=True)  # fmt: skip
            owner_phone = Phone(labs[0], OWNER, made["sip_password"])
            targets = [Phone(labs[1], c, second[c]) for c in sorted(second)[:3]]
            caller = Caller(CARRIER, free_port(), router.sip_port, ROUTER_IP)
            await caller.start()
            try:
                mover = Mover(client, service, labs[1], caller, None, None, {})  # type: ignore[arg-type]
                results["across_nodes"] = await across_nodes(
                    client, mover, caller, owner_phone, targets, args.router_moves
                )
            finally:
                caller.close()
            number = f"+49301{int(targets[0].customer[2:]):04d}0"  # rings its default target
            results["overhead"] = await overhead(
                labs, router, targets[0], number, args.router_samples
            )
            print(f"  router overhead: {results['overhead']['added_median_ms']:.2f} ms",
                  flush=True)  # fmt: skip
            results["asterisk_rss_mb"] = [rss_mb(lab.pid) for lab in labs]
        service.stop()
        for lab in labs:
            lab.down()
        print("  a million numbers", flush=True)
        results["million"] = await a_million(
            db_url, router, args.router_load_moves, args.router_rate, args.router_seconds
        )
        print(f"  {json.dumps(results['million'])}", flush=True)
    return results


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--router-pbxes", type=int, default=100, help="PBXs per node")
    parser.add_argument("--router-phones", type=int, default=100)
    parser.add_argument("--router-moves", type=int, default=20)
    parser.add_argument("--router-samples", type=int, default=100)
    parser.add_argument("--router-load-moves", type=int, default=100)
    parser.add_argument("--router-rate", type=int, default=250, help="calls per second")
    parser.add_argument("--router-seconds", type=float, default=30)
    parser.add_argument("--router-shm-mb", type=int, default=1024)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def table(r: dict[str, Any]) -> str:
    across, over, mega = r["across_nodes"], r["overhead"], r["million"]
    load = mega["load"]
    rows = [
        ("platform", f"2 nodes x {r['pbxes_per_node']} PBXs x {r['phones']} phones, built "
                     f"through the API in {r['build_s']:.0f} s"),
        ("block assigned across nodes: 2nd confirmation -> B's phone rings on node 2, "
         "through the router", f"{_ms(across['assigned_ring_s']['median'])} median, "
         f"{_ms(across['assigned_ring_s']['p95'])} p95, {_ms(across['assigned_ring_s']['max'])}"
         f" max ({across['assigned_ring_s']['n']} moves)"),
        ("reset: response -> A's phone rings on node 1 again",
         f"{_ms(across['reset_ring_s']['median'])} median, {_ms(across['reset_ring_s']['p95'])}"
         f" p95, {_ms(across['reset_ring_s']['max'])} max"),
        ("call setup INVITE -> 180, through the router / straight to the node",
         f"{over['router_s']['median'] * 1000:.2f} / {over['direct_s']['median'] * 1000:.2f} ms"
         f" median: the router adds {over['added_median_ms']:.2f} ms ({over['router_s']['n']}"
         " calls each)"),
        ("1,010,000 numbers (10,000 blocks of 100, one of 10,000; 10,001 router keys):"
         " Kamailio start until it answers / until "
         "a call routes right", f"{mega['start_until_rpc_s']:.1f} s / "
         f"{mega['start_until_routed_s']:.1f} s"),
        ("one block's change live (100 numbers: its key set and read back over JSON-RPC)",
         f"{_ms(mega['one_change_s']['median'])} median, {_ms(mega['one_change_s']['p95'])} p95"
         f" ({mega['one_change_s']['n']} changes); under load "
         f"{_ms(load['move_under_load_s']['median'])} median"),
        ("a block of 10,000 numbers (1 key) live at the router",
         f"{_ms(mega['big_change_s']['median'])} median, {_ms(mega['big_change_s']['p95'])} p95"
         f" ({mega['big_change_s']['n']} changes)"),
        ("Kamailio memory with the table", f"{mega['kamailio_shm_used_mb']:.0f} MB shared "
         f"memory used; RSS {mega['kamailio_rss_mb_main']:.0f} MB (main process)"),
        ("calls through the router while blocks move",
         f"{load['calls_per_s']:.0f} calls/s ({load['answered']} of {load['calls_sent']} "
         f"answered), {load['misrouted']} misrouted, during {load['moves']} moves; "
         f"INVITE -> final answer p99 {load['setup_p99_ms']:.1f} ms"),
    ]  # fmt: skip
    return rows_table(("measured", "result"), rows)


def report(results: dict[str, Any], folder: Path, readme: Path | None) -> None:
    report_part("router", results, table(results), folder, readme)
