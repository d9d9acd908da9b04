"""`make bench` (`--part failover`): a dead node's PBXs ring on its standby.

One run, on a fresh embedded PostgreSQL, two fresh lab Asterisks (node `default` and
its standby `node-b`), the lab's Kamailio in front of both (its carrier port and its
phone port) and the service (`provisioner serve`) with the product's defaults for
failover: the router probes each node every second and marks it down after 2
unanswered probes; the service moves a node's PBXs once the router has found it down
for `asterisk.failover_seconds` (10 s).

On `default`: P PBXs of N phones each, built through the API. The first PBX's first
phone registers through the router with its PBX's domain (<slug>.pbx.bench) and sends
REGISTER again every `--failover-register-every` seconds (its refresh; its
configuration never changes). The carrier calls that PBX's numbers through the router
at `--failover-rate` calls per second. Then, `--failover-runs` times: `default`'s
Asterisk is killed (SIGKILL), and measured from the kill:

- node.down and node.failover in the event feed (polled every 100 ms);
- the router sending the PBX's domain to node-b (from then on a REGISTER lands there);
- the phone's first registration there, and the first carrier call that rings it
  there; the calls sent after that ring which did not ring (the target: 0).

Then `default` starts again, the operator moves the PBXs back (PUT .../pbx), and the
next run starts once its numbers and its phone are back on `default`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    CARRIER,
    FIRST_EXT,
    ROUTER_IP,
    Client,
    Lab,
    RouterProc,
    all_routed,
    build_on,
    free_port,
    router_platform,
    summary,
    until,
    wait_service,
)
from bench.report import report_part, rows_table
from bench.sip import Prober, RingingPhone

DOMAIN = "pbx.bench"


class Watched:
    """The first PBX's first phone: rings for every call, refreshes its registration
    through the router on a fixed interval, and notes when each REGISTER was answered
    and how."""

    def __init__(self, router: RouterProc, slug: str, password: str) -> None:
        self.router, self.password = router, password
        self.user, self.domain = f"{slug}-{FIRST_EXT}", f"{slug}.{DOMAIN}"
        self.phone = RingingPhone(free_port())
        self.registered: list[tuple[float, int]] = []  # (time.time(), final status)

    async def register(self, expires: int = 300) -> int:
        status = await self.phone.register(
            (ROUTER_IP, self.router.phone_port), self.user, self.password, self.domain, expires
        )
        self.registered.append((time.time(), status))
        return status

    async def refresh(self, every: float, stop: asyncio.Event) -> None:
        """REGISTER every `every` seconds until `stop` (bounded by the caller's run)."""
        while not stop.is_set():
            await self.register()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)


async def events_after(client: Client, after: str) -> tuple[list[dict[str, Any]], str]:
    page = await client.ok("GET", f"/v1/events?after={after}&limit=500")
    return page["events"], page["next"]


async def routed_to(client: Client, router: RouterProc, key: str) -> str | None:
    """Where the router sends a key of its table (htable.get over its JSON-RPC)."""
    body = {"jsonrpc": "2.0", "method": "htable.get", "params": ["numbers", key], "id": 1}
    async with client.session.post(router.rpc_url, json=body) as r:
        answer = json.loads(await r.text())
    value = (answer.get("result") or {}).get("item", {}).get("value")
    return str(value) if value is not None else None


async def one_failover(
    client: Client, labs: list[Lab], router: RouterProc, watched: Watched, customers: list[str],
    args: argparse.Namespace, cursor: str,
) -> tuple[dict[str, float], str]:  # fmt: skip
    """Kill `default` under carrier calls; the figures, and the feed's cursor after."""
    standby = f"sip:127.0.0.1:{labs[1].sip_port}"
    pbx_key = f"pbx:{customers[0].lower()}"
    storm = Prober(CARRIER, free_port(), router.sip_port, asterisk_host=ROUTER_IP)
    # The first PBX's block +49 30 10000 with extensions 0-99 (1 or 2 digits).
    numbers = [f"+493010000{k}" for k in range(100)]
    found: dict[str, float] = {}
    stop = asyncio.Event()
    refreshing = asyncio.create_task(watched.refresh(args.failover_register_every, stop))
    try:
        async with storm.calling(numbers, args.failover_rate, at_least=10) as finish:
            rang = watched.phone.invites
            await until(lambda: watched.phone.invites >= rang + 10, 10,
                        "the phone does not ring on default")  # fmt: skip
            killed = time.time()
            os.kill(labs[0].pid, signal.SIGKILL)

            async def seen() -> bool:
                nonlocal cursor
                events, cursor = await events_after(client, cursor)
                for e in events:
                    if e["type"] in ("node.down", "node.failover") and e["type"] not in found:
                        found[e["type"]] = time.time() - killed
                if "routed" not in found and await routed_to(client, router, pbx_key) == standby:
                    found["routed"] = time.time() - killed
                return len(found) == 3

            try:
                await until(seen, 120, "no failover within 120 s", pause=0.1)
            except TimeoutError:
                where = await routed_to(client, router, pbx_key)
                state = await client.ok("GET", f"/v1/accounts/{customers[0]}/pbx/config")
                raise TimeoutError(f"no failover within 120 s: {found}; {pbx_key} -> {where},"
                                   f" not {standby}; its state {state}") from None  # fmt: skip
            landed = len(watched.registered)
            await until(lambda: any(s == 200 for _, s in watched.registered[landed:]), 60,
                        "the phone never registered on node-b")  # fmt: skip
            registered = next(t for t, s in watched.registered[landed:] if s == 200)
            found["registered"] = registered - killed
            await until(lambda: _rang_on(storm, after=killed), 30, "no call rang after the kill")
            first_ring = min(_rang_on(storm, after=killed))
            found["first_ring"] = first_ring - killed
            await asyncio.sleep(max(0.0, first_ring + 5 - time.time()))  # 5 s of calls after
            await finish()
    finally:
        stop.set()
        refreshing.cancel()
        await asyncio.gather(refreshing, return_exceptions=True)
    after = [c for c, sent in storm.sent.items() if sent >= first_ring]
    found["calls_after_first_ring"] = len(after)
    lost = [c for c in after if c not in storm.rang]
    found["lost_after_first_ring"] = len(lost)
    if lost:  # what they got instead, and when they were sent (after the first ring)
        print("    lost: " + "; ".join(
            f"{storm.numbers[c]} +{storm.sent[c] - first_ring:.2f} s: {storm.final.get(c)} "
            f"{storm.answered_by.get(c, '')}" for c in lost[:20]), flush=True)  # fmt: skip
    return found, cursor


def _rang_on(storm: Prober, after: float = 0.0) -> list[float]:
    return [t for c, t in storm.rang.items() if storm.sent[c] > after]


async def back_home(client: Client, lab: Lab, watched: Watched, customers: list[str]) -> None:
    """`default` started again; the operator moves the PBXs back; the phone's next
    REGISTER lands there. First the phone unregisters from node-b (Asterisk keeps a
    contact across its AOR's removal, and the next run's failover would find it there):
    each run starts with the phone known to `default` alone."""
    if await watched.register(expires=0) != 200:
        raise RuntimeError("the phone cannot unregister from node-b")
    await asyncio.to_thread(lab.up_again)

    async def moved_back() -> bool:
        for c in customers:
            status, _ = await client.call("PUT", f"/v1/accounts/{c}/pbx", {"node": "default"})
            if status != 200:
                return False
        return True

    await until(moved_back, 120, "the PBXs cannot be moved back", pause=1)
    await all_routed(client, customers, 300)
    home = f"sip:127.0.0.1:{lab.sip_port}"
    slug = customers[0].lower()

    async def phones_home() -> bool:
        return await routed_to(client, watched.router, f"pbx:{slug}") == home

    try:
        await until(phones_home, 60, "", pause=0.1)
    except TimeoutError:
        state = await client.ok("GET", f"/v1/accounts/{customers[0]}/pbx/config")
        del state["files"]
        where = await routed_to(client, watched.router, f"pbx:{slug}")
        raise RuntimeError(f"pbx:{slug} -> {where}, not {home}: {state}") from None

    async def registered() -> bool:
        return await watched.register() == 200

    await until(registered, 60, "the phone does not register on default again", pause=1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "pbxes": args.failover_pbxes, "phones": args.failover_phones,
        "rate": args.failover_rate, "register_every_s": args.failover_register_every,
    }  # fmt: skip
    async with router_platform("failover", 256) as platform:
        labs, router = platform.labs, platform.router
        service = platform.serve(standby=True, phone_domain=DOMAIN)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            client = Client(session, service.base)
            await wait_service(client)
            made = await build_on(client, args.failover_pbxes, args.failover_phones, "default", 0)
            customers = sorted(made)
            await all_routed(client, customers, 600)
            pbx = await client.ok("GET", f"/v1/accounts/{customers[0]}/pbx")
            watched = Watched(router, customers[0].lower(), made[customers[0]])
            assert pbx["sip_domain"] == watched.domain, pbx
            await watched.phone.start()
            try:
                if await watched.register() != 200:
                    raise RuntimeError("the phone does not register through the router")
                _, cursor = await events_after(client, "0")
                runs = []
                for i in range(args.failover_runs):
                    found, cursor = await one_failover(
                        client, labs, router, watched, customers, args, cursor
                    )
                    runs.append(found)
                    print(f"    run {i + 1}/{args.failover_runs}: " + ", ".join(
                        f"{k} {v:.1f} s" if isinstance(v, float) else f"{k} {v}"
                        for k, v in found.items()), flush=True)  # fmt: skip
                    await back_home(client, labs[0], watched, customers)
            finally:
                watched.phone.close()
    results["runs"] = runs
    for key in ("node.down", "node.failover", "routed", "registered", "first_ring"):
        results[key] = summary([r[key] for r in runs])
    results["calls_after_first_ring"] = sum(r["calls_after_first_ring"] for r in runs)
    results["lost_after_first_ring"] = sum(r["lost_after_first_ring"] for r in runs)
    return results


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--failover-pbxes", type=int, default=10, help="PBXs on the dead node")
    parser.add_argument("--failover-phones", type=int, default=10)
    parser.add_argument("--failover-runs", type=int, default=5)
    parser.add_argument("--failover-rate", type=float, default=20, help="carrier calls/s")
    parser.add_argument("--failover-register-every", type=float, default=2.0,
                        help="the phone's REGISTER interval (s)")  # fmt: skip


def _s(found: dict[str, float]) -> str:
    return f"{found['median']:.1f} s median, {found['max']:.1f} s max"


def table(r: dict[str, Any]) -> str:
    n = len(r["runs"])
    rows = [
        ("platform", f"node `default` with {r['pbxes']} PBXs x {r['phones']} phones, its "
                     "standby node-b, one router; the carrier calls one PBX's numbers at "
                     f"{r['rate']:.0f} calls/s through the router; {n} kills (SIGKILL)"),
        ("kill -> node.down in the feed", _s(r["node.down"])),
        ("kill -> node.failover in the feed (failover_seconds 10)", _s(r["node.failover"])),
        ("kill -> the router sends the PBX's phones to node-b", _s(r["routed"])),
        (f"kill -> its phone registered there (REGISTER every {r['register_every_s']:g} s, "
         "through the router, unchanged)", _s(r["registered"])),
        ("**kill -> first carrier call rings on node-b** (target <= 30 s, goal <= 10 s)",
         _s(r["first_ring"])),
        ("calls lost after that first ring",
         f"{r['lost_after_first_ring']} of {r['calls_after_first_ring']}"),
    ]  # fmt: skip
    return rows_table(("measured", "result"), rows)


def report(results: dict[str, Any], folder: Path, readme: Path | None) -> None:
    report_part("failover", results, table(results), folder, readme)
