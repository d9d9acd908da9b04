"""`make bench`: how fast a moved number rings in its new PBX, against node size.

For each node size it starts a fresh lab Asterisk, a fresh embedded PostgreSQL and the
service (`provisioner serve`, a process of its own), builds the node through the HTTP
API, and measures, in one run, side by side:

- time from the second confirmation's HTTP response until a call from the carrier (on
  127.0.0.2) to the moved number rings the target PBX's registered sipp phone, over
  `moves` block moves, incremental (the default) and then the old way (the same service
  with `asterisk.incremental: false`: full reloads, whole-node verification);
- time until an outbound call over the moved block's trunk reaches the carrier;
- a burst of assignments confirmed at once: time until every number routes, and the
  res_pjsip and pbx_config reloads it took (from /metrics);
- render time of one PBX in process; service and Asterisk RSS; API throughput;
- at the largest size, Asterisk's RSS after `rss_moves` more moves.

It prints a table and writes bench/results.json and bench/time-to-ring.png. Absolute
times depend on the machine; the ratios are what one run proves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import billing as billing_bench
from bench import failover as failover_bench
from bench import realtime as realtime_bench
from bench import router as router_bench
from bench.common import (
    CARRIER,
    DIALPLAN,
    PJSIP,
    ROOT,
    SECRETS_KEY,
    TARGETS,
    Client,
    Lab,
    Mover,
    Service,
    Size,
    all_applied,
    build,
    customer,
    free_port,
    pct,
    register_phones,
    rss_mb,
    summary,
    until,
    wait_service,
)
from bench.report import report
from bench.sip import Caller, CarrierUas


async def burst(client: Client, mover: Mover, count: int) -> dict[str, float]:
    pairs = []
    for i in range(count):
        block, number = await mover.new_block()
        pairs.append((block, number, *(await mover.links(block, customer(i % TARGETS)))))
    await asyncio.gather(*(mover.confirm(p[2]) for p in pairs))
    before = await client.metrics()
    started = time.monotonic()
    await asyncio.gather(*(mover.confirm(p[3]) for p in pairs))

    async def routed() -> bool:
        reply = await mover.ami.send_action({"Action": "ShowDialPlan", "Context": "carrier-in"},
                                            as_list=True)  # fmt: skip
        live = {m.get("Extension") for m in reply if m.get("Event") == "ListDialplan"}
        return all(f"_{p[1][:-1]}X" in live for p in pairs)

    await until(routed, 300, "burst not routed", pause=0.05)
    seconds = time.monotonic() - started
    await asyncio.sleep(5)  # the coalesced PJSIP reloads that follow
    after = await client.metrics()
    return {
        "count": count,
        "all_routed_s": seconds,
        "res_pjsip_reloads": after.get(PJSIP, 0) - before.get(PJSIP, 0),
        "pbx_config_reloads": after.get(DIALPLAN, 0) - before.get(DIALPLAN, 0),
    }


async def throughput(
    client: Client, block: str, seconds: float = 5, clients: int = 20
) -> dict[str, float]:
    times: list[float] = []
    stop = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < stop:
            t = time.monotonic()
            status, _ = await client.call("GET", f"/v1/blocks/{block}/assignment")
            if status != 200:
                raise RuntimeError(f"GET assignment: {status}")
            times.append(time.monotonic() - t)

    await asyncio.gather(*(one() for _ in range(clients)))
    return {"requests_per_s": len(times) / seconds, "p99_ms": pct(times, 0.99) * 1000}


def render_ms(db_url: str, slug_customer: str, secrets_key: str) -> float:
    """Render one PBX (view loaded once) in this process, median of 30."""
    import psycopg

    from provisioner.db import accounts as db_accounts
    from provisioner.domain.credentials import SecretBox
    from provisioner.render.load import load_view
    from provisioner.render.render import pbx_files
    from provisioner.render.view import Carrier

    async def load() -> Any:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            pbx = await db_accounts.get_pbx(conn, slug_customer)
            assert pbx is not None
            return await load_view(conn, pbx, SecretBox([secrets_key]))

    view = asyncio.run(load())
    carrier = Carrier(CARRIER, 5060)
    times = []
    for _ in range(30):
        t = time.perf_counter()
        pbx_files(view, carrier)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def moves(mover: Mover, count: int, *, outbound: bool) -> dict[str, Any]:
    """`count` moves one after another (each waits for its outbound check, so a move's
    PJSIP reload never overlaps the next move's ring), after one warm-up move that is
    not counted (the first call of a run pays for first-time setup in Asterisk)."""
    warm = await mover.move(count, outbound=outbound)
    print(f"    warm-up move: rings after {warm['ring'] * 1000:.0f} ms (not counted)")
    ring, out = [], []
    for i in range(count):
        measured = await mover.move(i, outbound=outbound)
        ring.append(measured["ring"])
        if "outbound" in measured:
            out.append(measured["outbound"])
        print(f"    move {i + 1}/{count}: rings after {measured['ring'] * 1000:.0f} ms"
              + (f", outbound after {measured['outbound']:.2f} s" if outbound else ""),
              flush=True)  # fmt: skip
    found: dict[str, Any] = {"ring_s": summary(ring)}
    if out:
        found["outbound_s"] = summary(out)
    return found


async def run_size(size: Size, work: Path, args: argparse.Namespace) -> None:
    from panoramisk import Manager

    from provisioner.db import embedded

    print(f"== {size.pbxes} PBXs x {size.phones} phones", flush=True)
    lab = Lab(Path(tempfile.gettempdir()) / f"prov-bench-lab-{size.pbxes}x{size.phones}")
    state = lab.up()
    pg_folder = Path(tempfile.mkdtemp(prefix="prov-bench-pg-", dir="/tmp"))
    db_url, server = embedded.start(pg_folder / "pg")
    carrier_port = free_port()
    carrier = CarrierUas(CARRIER, carrier_port)
    caller = Caller(CARRIER, free_port(), lab.sip_port)
    await carrier.start()
    await caller.start()
    service = Service(work, lab, db_url, carrier_port)
    ami = Manager(loop=asyncio.get_running_loop(), host="127.0.0.1", port=state["ami_port"],
                  username=state["ami_user"], secret=state["ami_secret"], ping_delay=0)  # fmt: skip
    await ami.connect()
    try:
        service.start(incremental=True)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            client = Client(session, service.base)
            await wait_service(client)
            started = time.monotonic()
            passwords = await build(client, size)
            customers = [customer(i) for i in range(size.pbxes)]
            await all_applied(client, customers, within=900)
            r = size.results
            r["build"] = {"seconds": time.monotonic() - started, "http_5xx": client.errors_5xx}
            print(
                f"  built in {r['build']['seconds']:.1f} s, {client.errors_5xx} x 5xx", flush=True
            )
            r["asterisk_rss_mb_after_build"] = rss_mb(lab.pid)
            phones = await register_phones(lab, passwords)
            mover = Mover(client, service, lab, caller, carrier, ami, phones)
            print("  incremental moves", flush=True)
            r["incremental"] = await moves(mover, args.moves, outbound=True)
            r["burst"] = await burst(client, mover, args.burst)
            print(f"  burst: {r['burst']}", flush=True)
            r["render_ms"] = await asyncio.to_thread(
                render_ms, db_url, customer(size.pbxes - 1), SECRETS_KEY
            )
            r["api"] = await throughput(client, "m0000")
            assert service.process is not None
            r["service_rss_mb"] = rss_mb(service.process.pid)
            if size.pbxes * size.phones >= 10000 and args.rss_moves:
                print(f"  {args.rss_moves} more moves for Asterisk's memory", flush=True)
                # One after another without waiting for each move's PJSIP reload: calls
                # then meet a running res_pjsip reload, which holds them up.
                r["back_to_back"] = await moves(mover, args.rss_moves, outbound=False)
                await asyncio.sleep(5)
                r["asterisk_rss_mb_after_moves"] = rss_mb(lab.pid)
                r["rss_moves"] = args.rss_moves
            service.stop()
            print("  baseline moves (full reloads)", flush=True)
            service.start(incremental=False)
            await wait_service(client)
            r["baseline"] = await moves(mover, args.baseline_moves, outbound=False)
            r["ratio"] = r["baseline"]["ring_s"]["median"] / r["incremental"]["ring_s"]["median"]
            r["http_5xx_total"] = client.errors_5xx
    finally:
        service.stop()
        ami.close()
        caller.close()
        carrier.close()
        lab.down()
        server.cleanup()
        shutil.rmtree(pg_folder, ignore_errors=True)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10x10,30x100,100x100")
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--baseline-moves", type=int, default=20)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--rss-moves", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "bench"))
    parser.add_argument(
        "--part", choices=("all", "moves", "router", "failover", "realtime", "billing"),
        default="all",
        help="moves: one node at each size; router: two nodes behind the SIP router;"
        " failover: a dead node's PBXs on its standby; realtime: one node in each PJSIP"
        " mode; billing: the CDR import and usage query",
    )  # fmt: skip
    router_bench.arguments(parser)
    failover_bench.arguments(parser)
    realtime_bench.arguments(parser)
    billing_bench.arguments(parser)
    args = parser.parse_args()
    out = Path(args.out)
    readme = ROOT / "README.md" if out == ROOT / "bench" else None
    for part, module, title in (
        ("router", router_bench, "two nodes behind the SIP router"),
        ("failover", failover_bench, "a dead node's PBXs ring on its standby"),
        ("realtime", realtime_bench, "one node in each PJSIP mode"),
        ("billing", billing_bench, "usage per owner account: CDR import, usage query"),
    ):
        if args.part in ("all", part):
            print(f"== {title}", flush=True)
            began = datetime.now(UTC)
            found = asyncio.run(module.run(args))
            module.report({"date": began.isoformat(timespec="seconds"), "machine": machine(),
                           **found}, out, readme)  # fmt: skip
    if args.part in ("router", "failover", "realtime", "billing"):
        return 0
    sizes = []
    for text in args.sizes.split(","):
        pbxes, phones = text.split("x")
        sizes.append(Size(int(pbxes), int(phones)))
    began = datetime.now(UTC)
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix="prov-bench-"))
        try:
            asyncio.run(run_size(size, work, args))
        finally:
            if os.environ.get("BENCH_KEEP"):
                print(f"  kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    results = {
        "date": began.isoformat(timespec="seconds"),
        "machine": machine(),
        "sizes": [asdict(s) for s in sizes],
    }
    report(results, out, readme)
    return 0


if __name__ == "__main__":
    # Here, not at the top: bench.router imports this module (its helpers) by name.

    raise SystemExit(main())
