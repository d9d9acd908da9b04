"""`make bench` part `billing`: how fast a node's CDR spool is imported (records a
second, by the service's own import step from a spool file as cdr_custom writes it, into
a fresh PostgreSQL), and how long the usage query takes over 1,000,000 records."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from bench.report import report_part, rows_table
from provisioner.db import calls, embedded
from provisioner.db.migrate import migrate
from provisioner.service import usage
from provisioner.settings import Billing, Node, Secret

START = datetime(2026, 11, 1, tzinfo=UTC)


def spool_line(n: int) -> str:
    start = START.timestamp() + n
    fields = [
        f"{start:.0f}.{n}", f"{start:.0f}.{n}", "0", f"{start:.6f}", f"{start + 2:.6f}",
        f"{start + 62:.6f}", "62", "60", "ANSWERED", f"K{100000 + n % 100}",
        f"K{200000 + n % 50}", f"blk-{n % 100}", "inbound", "+49891234560", "+4940999999",
    ]  # fmt: skip
    return ",".join(f'"{f}"' for f in fields) + "\n"


async def import_rate(url: str, work: Path, records: int) -> dict[str, float]:
    spool = work / "provisioner.csv"
    spool.write_text("".join(spool_line(n) for n in range(records)))
    node = Node(name="bench", ami_username="x", ami_secret=Secret("x"), output_dir=work,
                carrier_host="127.0.0.2", cdr_file=spool)  # fmt: skip
    async with AsyncConnectionPool(url, min_size=1, open=False) as pool:
        began = time.monotonic()
        while await usage.import_step(pool, node, Billing(), datetime.now(UTC)):
            pass
        took = time.monotonic() - began
    return {"records": records, "seconds": round(took, 2), "per_second": round(records / took)}


def fill(url: str, rows: int) -> None:
    """`rows` records over 30 days: one big owner account (K999999, every tenth record),
    the rest over 1,000 owner accounts, 500 PBXs, 2,000 blocks."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO calls (node, uniqueid, sequence, linkedid, started_at, answered_at,"
            " ended_at, duration, billsec, disposition, direction, number, peer, owner, pbx,"
            " block_id, imported_at)"
            " SELECT 'node-' || (g %% 4), 'u' || g, 0, 'u' || g,"
            "        %(start)s + g * interval '2.592 seconds',"
            "        %(start)s + g * interval '2.592 seconds' + interval '3 s',"
            "        %(start)s + g * interval '2.592 seconds' + interval '63 s', 63, 60,"
            "        CASE WHEN g %% 10 = 0 THEN 'NO ANSWER' ELSE 'ANSWERED' END,"
            "        (ARRAY['inbound', 'outbound', 'internal'])[1 + g %% 3], '+49891234560',"
            "        '+4940999999',"
            "        CASE WHEN g %% 10 = 1 THEN 'K999999' ELSE 'K' || (100000 + g %% 1000) END,"
            "        'K' || (200000 + g %% 500),"
            "        'blk-' || (g %% 2000), now()"
            " FROM generate_series(1, %(rows)s) g",
            {"start": START, "rows": rows},
        )
        # Each call's usage, as the import keeps it in the statement storing the records.
        conn.execute(
            "INSERT INTO call_usage (node, linkedid, block_id, owner, pbx, direction,"
            " started_at, answered, billsec)"
            " SELECT node, linkedid, block_id, owner, pbx, direction, min(started_at),"
            "        bool_or(disposition = 'ANSWERED'), sum(billsec)"
            " FROM calls GROUP BY node, linkedid, block_id, owner, pbx, direction"
        )
        conn.execute("VACUUM ANALYZE calls")
        conn.execute("VACUUM ANALYZE call_usage")


async def query_time(url: str, samples: int, big: bool = False) -> dict[str, float]:
    """The usage of one account over the whole month, as the API runs it: of a typical
    owner (about 900 records), or of the big one (100,000)."""
    timings: list[float] = []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for n in range(samples):
            account = "K999999" if big else f"K{100000 + n % 1000}"
            began = time.monotonic()
            await calls.usage(conn, account, START, START + timedelta(days=31))
            timings.append((time.monotonic() - began) * 1000)
    timings.sort()
    return {
        "median_ms": round(statistics.median(timings), 1),
        "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 1),
        "max_ms": round(timings[-1], 1),
        "samples": samples,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="prov-bench-billing-", dir="/tmp"))
    url, server = embedded.start(work / "pg")
    try:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await migrate(conn)
        imported = await import_rate(url, work, args.billing_records)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE calls")
        fill(url, args.billing_rows)
        query = await query_time(url, args.billing_samples)
        big = await query_time(url, 20, big=True)
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return {"import": imported, "rows": args.billing_rows, "usage_query": query,
            "usage_query_big": big}  # fmt: skip


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--billing-records", type=int, default=50_000)
    parser.add_argument("--billing-rows", type=int, default=1_000_000)
    parser.add_argument("--billing-samples", type=int, default=200)


def table(r: dict[str, Any]) -> str:
    imported, query, big = r["import"], r["usage_query"], r["usage_query_big"]
    rows = [
        ("import of a node's CDR spool (the service's import step, one node)",
         f"{imported['per_second']:,} records/s ({imported['records']:,} records in "
         f"{imported['seconds']} s)"),
        (f"usage query of one account over a month, {r['rows']:,} records in the table",
         f"{query['median_ms']} ms median, {query['p95_ms']} ms p95, {query['max_ms']} ms max "
         f"({query['samples']} accounts, about 900 records each)"),
        ("the same, of the biggest account (100,000 records in the month)",
         f"{big['median_ms']} ms median, {big['p95_ms']} ms p95, {big['max_ms']} ms max "
         f"({big['samples']} runs)"),
    ]  # fmt: skip
    return rows_table(("what", "measured"), rows)


def report(results: dict[str, Any], folder: Path, readme: Path | None) -> None:
    report_part("billing", results, table(results), folder, readme)
