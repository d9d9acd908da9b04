"""`make bench BENCH_ARGS="--part realtime"`: one node of 100 PBXs x 100 phones in each
PJSIP mode, files and then realtime, built and measured the same way in one run:

1. 2nd confirmation -> the target PBX `applied` (its latest revision live in both parts),
   and -> the first outbound call over the moved block's trunk reaching the carrier;
2. a new phone's PUT response -> its REGISTER accepted (sipp, tried until it is);
3. call setup of tenants nobody touches, under churn: for 60 s one change a second (a
   phone renamed in a random PBX) while the carrier calls a phone of a PBX that never
   changes every 200 ms: INVITE -> 180 from that phone, p50/p99/max;
4. REGISTER and INVITE throughput (sipp, as fast as Asterisk answers): 4,000 phones
   registering (each one's first REGISTER, then all again: a realtime node answers from
   Sorcery's memory cache, which the apply's read-back filled; then all again with the
   cache emptied, each phone's endpoint, AOR and auth read from PostgreSQL), 2,900
   carrier calls to numbers whose phone is not registered (each an endpoint and AOR
   lookup, answered 404: no contact): the cost of the database lookups;
5. Asterisk's RSS after the build and a full round (every object read once: each
   apply reads its endpoints back, which caches them on a realtime node, as a node holds
   them in its steady state), after 1,000 changes, after another full round and after
   5,000 changes in all (measured first, before calls and registrations add channels and
   contacts): memory that grows with changes or rounds grows over these steps, a cache
   filling up does not; res_pjsip reloads.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from sipp_peer import run_scenario

from bench.common import (
    CARRIER,
    FIRST_EXT,
    PJSIP,
    ROOT,
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
from bench.report import report_part, rows_table
from bench.sip import Caller, CarrierUas, Prober, RingingPhone

SCENARIOS = ROOT / "bench" / "sipp"
PROBED = 9  # the PBX whose phone the carrier calls under churn; nobody changes it
PROBE_EXT = "399"
REGISTERING = range(10, 50)  # PBXs whose phones register in the throughput test
CALLED = range(50, 99)  # PBXs whose numbers the carrier calls in the throughput test
REALTIME_ROLE = "bench_realtime"
REALTIME_SECRET = "bench-realtime-secret"  # noqa: S105 - a throwaway lab database's


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rt-pbxes", type=int, default=100)
    parser.add_argument("--rt-phones", type=int, default=100)
    parser.add_argument("--rt-moves", type=int, default=20)
    parser.add_argument("--rt-new-phones", type=int, default=10)
    parser.add_argument("--rt-churn-seconds", type=float, default=60)
    parser.add_argument("--rt-changes", type=int, default=1000)


async def reader_url(db_url: str) -> str:
    """The realtime node's login (provisioner pjsip-reader), after the migrations."""
    import psycopg

    from provisioner.db import pjsip_rows
    from provisioner.db.migrate import migrate

    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await migrate(conn)
        await pjsip_rows.make_reader(conn, REALTIME_ROLE, REALTIME_SECRET, "default")
        await conn.commit()
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info.update(user=REALTIME_ROLE, password=REALTIME_SECRET)
    return psycopg.conninfo.make_conninfo("", **info)


async def revision(client: Client, c: str) -> int:
    state = await client.ok("GET", f"/v1/accounts/{c}/pbx/config")
    return int(state["revision"] or 0)


async def applied_after(client: Client, c: str, before: int) -> float:
    """Until the PBX has a revision newer than `before` and it is applied; time.time()."""

    async def done() -> bool:
        state = await client.ok("GET", f"/v1/accounts/{c}/pbx/config")
        return bool(
            state["apply_state"] == "applied"
            and (state["revision"] or 0) > before
            and state["applied_revision"] == state["revision"]
        )

    await until(done, 60, f"{c} not applied", pause=0.01)
    return time.time()


async def moves(client: Client, mover: Mover, count: int) -> dict[str, Any]:
    """Blocks of the owner assigned to target PBXs: 2nd confirmation -> applied, and
    -> an outbound call over the block's trunk reaches the carrier. One warm-up."""
    applied, outbound = [], []
    for i in range(count + 1):
        target = customer(i % TARGETS)
        block, _number = await mover.new_block()
        owner_link, target_link = await mover.links(block, target)
        await mover.confirm(owner_link)
        before = await revision(client, target)
        await mover.confirm(target_link)
        confirmed = time.time()
        trunk = f"{target.lower()}-trunk-{block}"
        done, out = await asyncio.gather(
            applied_after(client, target, before),
            mover.until_outbound(trunk, f"+4989777{i:04d}", confirmed, every=0.02),
        )
        if i:
            applied.append(done - confirmed)
            outbound.append(out)
        print(f"    move {i}/{count}{' (warm-up)' if not i else ''}: applied after "
              f"{(done - confirmed) * 1000:.0f} ms, outbound after {out * 1000:.0f} ms",
              flush=True)  # fmt: skip
    return {"applied_s": summary(applied), "outbound_s": summary(outbound)}


async def new_phones(client: Client, lab: Lab, count: int) -> dict[str, Any]:
    """A phone PUT, then REGISTER until it is accepted: seconds from the PUT's response."""
    took = []
    for i in range(count):
        c, ext = customer(TARGETS + i), f"3{i:02d}"
        body = {"name": f"Neu {i}", "site_block": f"site-{TARGETS + i}"}
        made = await client.ok("PUT", f"/v1/accounts/{c}/pbx/extensions/{ext}", body)
        put_at, port, user = time.time(), free_port(), f"{c.lower()}-{ext}"
        attempts = 0
        while True:
            attempts += 1
            result = await asyncio.to_thread(
                run_scenario, "register", remote_port=lab.sip_port, local_port=port,
                service=user, username=user, password=made["sip_password"],
                variables={"expires": "60"}, timeout=10,
            )  # fmt: skip
            if result.ok:
                break
            if time.time() - put_at > 60:
                raise RuntimeError(f"{user} did not register: {result.evidence()}")
        took.append(time.time() - put_at)
        print(f"    new phone {i + 1}/{count}: registered {took[-1] * 1000:.0f} ms after its "
              f"PUT ({attempts} attempts)", flush=True)  # fmt: skip
    return {"register_s": summary(took)}


async def probe_phone(client: Client, lab: Lab) -> tuple[RingingPhone, str]:
    """A phone with a number of its own in the PBX nobody changes, registered; then it
    rings for every call."""
    c, i = customer(PROBED), PROBED
    number = f"+49301{i:04d}99"
    body = {"name": "Empfang", "site_block": f"site-{i}", "did": number}
    before = await revision(client, c)
    made = await client.ok("PUT", f"/v1/accounts/{c}/pbx/extensions/{PROBE_EXT}", body)
    await applied_after(client, c, before)
    port, user = free_port(), f"{c.lower()}-{PROBE_EXT}"
    result = await asyncio.to_thread(
        run_scenario, "register", remote_port=lab.sip_port, local_port=port, service=user,
        username=user, password=made["sip_password"], variables={"expires": "3600"},
    )  # fmt: skip
    if not result.ok:
        raise RuntimeError(f"the probe phone did not register: {result.evidence()}")
    phone = RingingPhone(port)
    await phone.start()
    return phone, number


async def churn(client: Client, lab: Lab, seconds: float, pbxes: int) -> dict[str, Any]:
    """One change a second in random PBXs; the carrier calls the untouched PBX's phone
    every 200 ms meanwhile. INVITE -> 180 of those calls, and the reloads meanwhile."""
    phone, number = await probe_phone(client, lab)
    prober = Prober(CARRIER, free_port(), lab.sip_port)
    await prober.start()
    others = [i for i in range(TARGETS, pbxes) if i != PROBED]
    before = (await client.metrics()).get(PJSIP, 0)
    cpu_before = asterisk_cpu_seconds(lab)
    started = time.monotonic()

    async def changes() -> int:
        n = 0
        while time.monotonic() - started < seconds:
            i = random.choice(others)
            await client.ok("PUT", f"/v1/accounts/{customer(i)}/pbx/extensions/{FIRST_EXT}",
                            {"name": f"Churn {n}", "site_block": f"site-{i}"})  # fmt: skip
            n += 1
            await asyncio.sleep(max(0.0, started + n - time.monotonic()))
        return n

    async def calls() -> None:
        k = 0
        while time.monotonic() - started < seconds:
            prober.invite(number)
            k += 1
            await asyncio.sleep(max(0.0, started + k * 0.2 - time.monotonic()))

    try:
        made, _ = await asyncio.gather(changes(), calls())
        await asyncio.sleep(10)  # the last calls' answers
    finally:
        prober.close()
        phone.close()
    setups = [prober.rang[c] - t for c, t in prober.sent.items() if c in prober.rang]
    after = (await client.metrics()).get(PJSIP, 0)
    return {
        "seconds": seconds,
        "changes": made,
        "calls": len(prober.sent),
        "rang": len(setups),
        "setup_ms": {
            "p50": pct(setups, 0.5) * 1000,
            "p99": pct(setups, 0.99) * 1000,
            "max": max(setups) * 1000,
        },
        "res_pjsip_reloads": after - before,
        "asterisk_cpu_share": (asterisk_cpu_seconds(lab) - cpu_before) / seconds,
    }


def asterisk_cpu_seconds(lab: Lab) -> float:
    fields = Path(f"/proc/{lab.pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sipp_rate(
    lab: Lab, scenario: str, rows: list[str], work: Path, local_ip: str
) -> dict[str, Any]:
    """sipp runs `scenario` once per row of its injection file, as fast as Asterisk
    answers (up to 100 at once); calls per second and the failures."""
    csv = work / f"{scenario}.csv"
    csv.write_text("SEQUENTIAL\n" + "\n".join(rows) + "\n")
    started = time.monotonic()
    done = subprocess.run(
        ["sipp", f"127.0.0.1:{lab.sip_port}", "-sf", str(SCENARIOS / f"{scenario}.xml"),
         "-inf", str(csv), "-i", local_ip, "-p", str(free_port()), "-m", str(len(rows)),
         "-r", "5000", "-l", "100", "-nostdin", "-timeout", "300s", "-trace_err",
         "-error_file", str(work / f"{scenario}.errors")],
        cwd=work, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    took = time.monotonic() - started
    failed = re.search(r"Failed call\s+\|\s+\d+\s+\|\s+(\d+)", done.stdout)
    ok = re.search(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", done.stdout)
    succeeded = int(ok.group(1)) if ok else 0
    if succeeded < len(rows):
        errors = work / f"{scenario}.errors"
        text = errors.read_text(errors="replace") if errors.exists() else done.stderr
        print(f"    {scenario}: {len(rows) - succeeded} failed; sipp said:\n{text[-1500:]}")
    return {
        "calls": len(rows),
        "succeeded": succeeded,
        "failed": int(failed.group(1)) if failed else len(rows) - succeeded,
        "seconds": took,
        "per_s": succeeded / took,
    }


async def throughput(lab: Lab, ami: Any, phones: dict[str, str], pbxes: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="prov-bench-sipp-"))
    try:
        registering = [f"{u};[authentication username={u} password={p}]"
                       for u, p in phones.items() if int(u[2:7]) in REGISTERING]  # fmt: skip
        called = [f"+49301{i:04d}{n:02d}" for i in CALLED if i < pbxes for n in range(10, 70)]
        # Phones from 127.0.0.1 (the carrier's address identifies the carrier).
        # First REGISTER of each phone (a realtime node looks its objects up: as after an
        # Asterisk restart), then all again (the steady state: phones refresh).
        register = await asyncio.to_thread(
            sipp_rate, lab, "register_many", registering, work, "127.0.0.1"
        )
        again = await asyncio.to_thread(
            sipp_rate, lab, "register_many", registering, work, "127.0.0.1"
        )
        invite = await asyncio.to_thread(sipp_rate, lab, "invite_many", called, work, CARRIER)
        # As after an Asterisk restart or a full round on a realtime node: nothing cached,
        # every phone's endpoint, AOR and auth read from PostgreSQL. (A files node holds
        # its objects in memory always; emptying a cache it does not have changes nothing.)
        for kind in ("endpoint", "aor", "auth"):
            await ami.send_action({"Action": "SorceryMemoryCacheExpire",
                                   "Cache": f"res_pjsip/{kind}"})  # fmt: skip
        cold = await asyncio.to_thread(
            sipp_rate, lab, "register_many", registering, work, "127.0.0.1"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"register": register, "register_again": again, "register_cold": cold,
            "invite": invite}  # fmt: skip


async def many_changes(client: Client, count: int, pbxes: int) -> float:
    """`count` phone renames in random PBXs, four at a time, until all are applied."""
    gate = asyncio.Semaphore(4)
    started = time.monotonic()

    async def one(n: int) -> None:
        i = random.randrange(TARGETS, pbxes)
        async with gate:
            await client.ok("PUT", f"/v1/accounts/{customer(i)}/pbx/extensions/{FIRST_EXT}",
                            {"name": f"Lauf {n}", "site_block": f"site-{i}"})  # fmt: skip

    await asyncio.gather(*(one(n) for n in range(count)))
    await asyncio.sleep(2)  # the last jobs taken by a round (then "applied" means them)
    await all_applied(client, [customer(i) for i in range(pbxes)], within=600)
    return time.monotonic() - started


async def full_round(client: Client, work: Path, c: str) -> None:
    """`provisioner apply <c> --full`, as an operator runs it (on a realtime node: the
    cache emptied, then every endpoint read back), until the round is live. Tried again
    while a round of the service's own worker holds the node; one that Asterisk put off
    (`pending`: a reload of the worker's still running) is the worker's to finish."""
    for _ in range(120):
        done = await asyncio.to_thread(
            subprocess.run,
            [str(ROOT / ".venv" / "bin" / "provisioner"), "apply", c, "--full",
             "--config", str(work / "config.yaml")],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if "another instance is applying" in done.stdout + done.stderr:
            await asyncio.sleep(1)
            continue
        if not done.stdout.startswith(("applied", "pending")):  # (pending: exit 1)
            raise RuntimeError(f"full round failed: {done.stdout} {done.stderr[-2000:]}")
        await all_applied(client, [c], within=600)
        return
    raise RuntimeError("full round: the node stayed busy for 120 tries")


async def run_mode(mode: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from panoramisk import Manager

    from provisioner.db import embedded

    print(f"== pjsip: {mode}, {args.rt_pbxes} PBXs x {args.rt_phones} phones", flush=True)
    lab = Lab(Path(tempfile.gettempdir()) / f"prov-bench-rt-{mode}")
    pg_folder = Path(tempfile.mkdtemp(prefix="prov-bench-pg-", dir="/tmp"))
    db_url, server = embedded.start(pg_folder / "pg")
    extra = ["--pjsip-db", await reader_url(db_url)] if mode == "realtime" else []
    state = lab.up(*extra)
    carrier_port = free_port()
    carrier = CarrierUas(CARRIER, carrier_port)
    caller = Caller(CARRIER, free_port(), lab.sip_port)
    await carrier.start()
    await caller.start()
    service = Service(work, lab, db_url, carrier_port, pjsip=mode)
    ami = Manager(loop=asyncio.get_running_loop(), host="127.0.0.1", port=state["ami_port"],
                  username=state["ami_user"], secret=state["ami_secret"], ping_delay=0)  # fmt: skip
    await ami.connect()
    r: dict[str, Any] = {"mode": mode}
    try:
        service.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            client = Client(session, service.base)
            await wait_service(client)
            started = time.monotonic()
            phones: dict[str, str] = {}  # every phone's password (shown once, at its PUT)
            passwords = await build(client, Size(args.rt_pbxes, args.rt_phones), keep=phones)
            await all_applied(client, [customer(i) for i in range(args.rt_pbxes)], 1800)
            r["build_s"] = time.monotonic() - started
            print(f"  built in {r['build_s']:.0f} s", flush=True)
            r["res_pjsip_reloads_build"] = (await client.metrics()).get(PJSIP, 0)
            # Memory first, before any call or registration adds channels and contacts;
            # every object read once first, so that a cache filling up is not taken for
            # memory that grows with changes.
            await full_round(client, work, customer(TARGETS))
            await asyncio.sleep(3)
            r["asterisk_rss_mb_after_build"] = rss_mb(lab.pid)
            print(f"  {args.rt_changes} changes for Asterisk's memory", flush=True)
            r["changes_s"] = await many_changes(client, args.rt_changes, args.rt_pbxes)
            await asyncio.sleep(3)
            r["asterisk_rss_mb_after_changes"] = rss_mb(lab.pid)
            await full_round(client, work, customer(TARGETS))
            await asyncio.sleep(3)
            r["asterisk_rss_mb_after_full_round"] = rss_mb(lab.pid)
            print(f"  {4 * args.rt_changes} changes more", flush=True)
            await many_changes(client, 4 * args.rt_changes, args.rt_pbxes)
            await asyncio.sleep(3)
            r["asterisk_rss_mb_after_five_times_the_changes"] = rss_mb(lab.pid)
            r["changes"] = args.rt_changes
            registered = await register_phones(lab, passwords)
            mover = Mover(client, service, lab, caller, carrier, ami, registered)
            r["moves"] = await moves(client, mover, args.rt_moves)
            r["new_phones"] = await new_phones(client, lab, args.rt_new_phones)
            print("  churn", flush=True)
            r["churn"] = await churn(client, lab, args.rt_churn_seconds, args.rt_pbxes)
            print(f"    {r['churn']}", flush=True)
            print("  throughput", flush=True)
            r["throughput"] = await throughput(lab, ami, phones, args.rt_pbxes)
            print(f"    {r['throughput']}", flush=True)
            r["res_pjsip_reloads_total"] = (await client.metrics()).get(PJSIP, 0)
            r["http_5xx"] = client.errors_5xx
    finally:
        service.stop()
        ami.close()
        caller.close()
        carrier.close()
        lab.down()
        server.cleanup()
        shutil.rmtree(pg_folder, ignore_errors=True)
    return r


async def run(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {"pbxes": args.rt_pbxes, "phones": args.rt_phones}
    for mode in ("files", "realtime"):
        work = Path(tempfile.mkdtemp(prefix="prov-bench-"))
        try:
            found[mode] = await run_mode(mode, args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return found


# --- The report ---------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def table(r: dict[str, Any]) -> str:
    f, t = r["files"], r["realtime"]

    def both(cell: Any) -> str:
        return f"{cell(f)} | {cell(t)}"

    def rss(m: dict[str, Any]) -> str:
        steps = [m[f"asterisk_rss_mb_after_{s}"]
                 for s in ("build", "changes", "full_round", "five_times_the_changes")]  # fmt: skip
        growth = (steps[-1] - steps[0]) / steps[0]
        return " / ".join(f"{mb:.0f}" for mb in steps) + f" MB ({growth:+.0%} in all)"

    def spread(key: str, part: str) -> Any:
        return lambda m: (f"{_ms(m[part][key]['median'])} median, {_ms(m[part][key]['p95'])} "
                          f"p95 ({m[part][key]['n']})")  # fmt: skip

    rows = [
        ("built through the API", both(lambda m: f"{m['build_s']:.0f} s")),
        ("2nd confirmation -> target PBX `applied`", both(spread("applied_s", "moves"))),
        ("2nd confirmation -> outbound call over the moved trunk reaches the carrier",
         both(spread("outbound_s", "moves"))),
        ("new phone: PUT response -> REGISTER accepted", both(spread("register_s", "new_phones"))),
        ("untouched PBX under churn (1 change/s, a call every 200 ms): INVITE -> 180",
         both(lambda m: f"p50 {m['churn']['setup_ms']['p50']:.1f} ms, p99 "
                        f"{m['churn']['setup_ms']['p99']:.1f} ms, max "
                        f"{m['churn']['setup_ms']['max']:.0f} ms ({m['churn']['rang']} of "
                        f"{m['churn']['calls']} rang)")),
        ("res_pjsip reloads during the churn / Asterisk's CPU meanwhile",
         both(lambda m: f"{m['churn']['res_pjsip_reloads']:.0f} / "
                        f"{m['churn']['asterisk_cpu_share']:.2f} of a core")),
        ("REGISTER throughput (sipp, 4,000 phones): the first REGISTER of each / all again",
         both(lambda m: f"{m['throughput']['register']['per_s']:.0f}/s / "
                        f"{m['throughput']['register_again']['per_s']:.0f}/s "
                        f"({m['throughput']['register']['failed']} + "
                        f"{m['throughput']['register_again']['failed']} failed)")),
        ("REGISTER throughput, all 4,000 again with the cache emptied (endpoint, AOR, auth)",
         both(lambda m: f"{m['throughput']['register_cold']['per_s']:.0f}/s "
                        f"({m['throughput']['register_cold']['failed']} failed)")),
        ("INVITE throughput (carrier calls, endpoint and AOR looked up, 404)",
         both(lambda m: f"{m['throughput']['invite']['per_s']:.0f}/s "
                        f"({m['throughput']['invite']['failed']} failed)")),
        ("Asterisk RSS with every object read once / after 1,000 changes / after a full "
         "round / after 5,000 changes", both(rss)),
        ("res_pjsip reloads: the build (the node's own file) / the whole run",
         both(lambda m: f"{m['res_pjsip_reloads_build']:.0f} / "
                        f"{m['res_pjsip_reloads_total']:.0f}")),
    ]  # fmt: skip
    return rows_table(("measured", "pjsip: files", "pjsip: realtime"), rows)


def report(results: dict[str, Any], folder: Path, readme: Path | None) -> None:
    report_part(
        "realtime",
        results,
        table(results),
        folder,
        readme,
        f", one node of {results['pbxes']} PBXs x {results['phones']} phones in each mode",
    )
