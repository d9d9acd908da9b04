"""Usage per owner account without Asterisk: spool lines as the lab's cdr_custom.conf
writes them, imported into a real PostgreSQL (idempotently, whole lines only, from the
stored offset), and what each account sees of them through the API (JSON, CSV, pages).
The same with real calls on real nodes: tests/test_billing.py."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures_service import ENGINEER_KEY, Api, FakeClock
from helpers import OTHER, OWNER, TARGET, scene
from psycopg_pool import AsyncConnectionPool

from provisioner.domain.usage import BadRecord, parse_line
from provisioner.service import usage
from provisioner.settings import Billing, Node, Secret, Settings

T0 = 1793955600.0  # 2026-11-06 09:00:00 UTC


def line(uniqueid: str, *, start: float = T0, billsec: int = 30, answered: bool = True,
         owner: str = OWNER, pbx: str = TARGET, block: str = "muc-main",
         direction: str = "inbound", number: str = "+49891234560", peer: str = "+4940999999",
         sequence: int = 0, linkedid: str | None = None) -> str:  # fmt: skip
    """A spool line as cdr_custom.conf's mapping writes it (every field quoted)."""
    answer = f"{start + 2:.6f}" if answered else ""
    end = start + 2 + billsec
    fields = [
        uniqueid, linkedid or uniqueid, str(sequence), f"{start:.6f}", answer, f"{end:.6f}",
        str(2 + billsec), str(billsec if answered else 0),
        "ANSWERED" if answered else "NO ANSWER", owner, pbx, block, direction, number, peer,
    ]  # fmt: skip
    return ",".join('"' + f.replace('"', '""') + '"' for f in fields) + "\n"


def test_a_spool_line_is_read_field_by_field() -> None:
    record = parse_line(line("1793955600.12", billsec=42).rstrip("\n"))
    assert record.started_at == datetime(2026, 11, 6, 9, 0, tzinfo=UTC)
    assert record.billsec == 42 and record.duration == 44 and record.disposition == "ANSWERED"
    assert (record.owner, record.pbx, record.block_id) == (OWNER, TARGET, "muc-main")
    assert (record.direction, record.number, record.peer) == ("inbound", "+49891234560",
                                                              "+4940999999")  # fmt: skip
    unanswered = parse_line(line("x.1", answered=False).rstrip("\n"))
    assert unanswered.answered_at is None and unanswered.billsec == 0
    # A call between two phones sets no usage variables: internal, the PBX's own.
    internal = parse_line(line("x.2", owner=TARGET, pbx="", block="", direction="",
                               number="", peer="").rstrip("\n"))  # fmt: skip
    assert (internal.direction, internal.pbx, internal.block_id) == ("internal", TARGET, None)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not,a,record",
        line("1.1").replace('"ANSWERED"', '"MAYBE"'),
        line("1.1").replace('"inbound"', '"sideways"'),
        line("1.1").replace('"30"', '"-3"'),
        line("1.1").replace('"K200300"', '"K200300\\nX-Injected: 1"'),
        line("1.1").replace('"+49891234560"', '"+4989=cmd|"'),
        line("1.1").replace(f'"{T0:.6f}"', '"yesterday"', 1),
        line('1.1"; DROP'),
        '"unterminated,' + line("1.1"),
    ],
)
def test_a_line_that_is_no_record_of_ours_is_refused(bad: str) -> None:
    with pytest.raises(BadRecord):
        parse_line(bad.rstrip("\n"))


def spool_node(spool: Path, tmp_path: Path, name: str = "node-a") -> Node:
    return Node(name=name, ami_username="x", ami_secret=Secret("x"), output_dir=tmp_path,
                carrier_host="127.0.0.2", cdr_file=spool)  # fmt: skip


async def import_all(pool: AsyncConnectionPool, node: Node, billing: Billing) -> int:
    read = 0
    while lines := await usage.import_step(pool, node, billing, datetime.now(UTC)):
        read += lines
    return read


def stored(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute("SELECT node, uniqueid, sequence, billsec FROM calls ORDER BY id").fetchall()


async def test_the_import_stores_each_record_once_and_leaves_a_half_written_line(
    db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    spool = tmp_path / "provisioner.csv"
    node = spool_node(spool, tmp_path)
    billing = Billing()
    async with AsyncConnectionPool(db_url, min_size=1, open=False) as pool:
        assert await import_all(pool, node, billing) == 0  # no spool yet: nothing, no error
        spool.write_text(line("1.1") + line("1.2") + line("1.3")[:40])  # the last half-written
        assert await import_all(pool, node, billing) == 2
        assert [r[1] for r in stored(db)] == ["1.1", "1.2"]
        with spool.open("a") as more:  # the rest of the line, a garbage line, one more
            more.write(line("1.3")[40:] + "garbage\n" + line("1.4"))
        assert await import_all(pool, node, billing) == 3
        assert [r[1] for r in stored(db)] == ["1.1", "1.2", "1.3", "1.4"]
        # The whole spool again (a re-import; the same after a crash before the offset
        # was stored): nothing is stored twice.
        await usage.restart_import(pool, node, datetime.now(UTC))
        assert await import_all(pool, node, billing) == 5
        assert len(stored(db)) == 4
        # Rotated by a rename while lines of the old file wait: the old file's rest
        # first (found by its inode), then the new file from its start.
        with spool.open("a") as more:
            more.write(line("1.5"))
        spool.rename(tmp_path / "provisioner.csv.1")
        spool.write_text(line("2.1") + line("1.4"))
        assert await import_all(pool, node, billing) == 3
        assert [r[1] for r in stored(db)] == ["1.1", "1.2", "1.3", "1.4", "1.5", "2.1"]
        # Gone, and a new one: read from its start (records read again stored once). Its
        # first line is a new record, as in any new spool: the file may get the inode of
        # the one just removed, and then its first line is what tells it apart.
        (tmp_path / "provisioner.csv.1").unlink()
        spool.unlink()
        spool.write_text(line("2.2") + line("2.1"))
        assert await import_all(pool, node, billing) == 2
        assert [r[1] for r in stored(db)][-2:] == ["2.1", "2.2"]
        # A new spool at the inode of the old one (a removed file's inode is often given
        # to the next file at once), as long as the old one: its first line tells.
        inode = spool.stat().st_ino
        spool.write_text(line("3.1") + line("3.2"))
        assert spool.stat().st_ino == inode
        assert await import_all(pool, node, billing) == 2
        assert [r[1] for r in stored(db)][-2:] == ["3.1", "3.2"]
        # Another node's records with the same uniqueid are other records.
        other = tmp_path / "other.csv"
        other.write_text(line("1.1"))
        await import_all(pool, spool_node(other, tmp_path, "node-b"), billing)
        assert ("node-b", "1.1", 0, 30) in stored(db)
        assert len(stored(db)) == 10


async def test_call_events_are_put_in_the_feed_when_asked(
    db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    spool = tmp_path / "provisioner.csv"
    spool.write_text(line("3.1"))
    async with AsyncConnectionPool(db_url, min_size=1, open=False) as pool:
        await import_all(pool, spool_node(spool, tmp_path), Billing())
        assert db.execute("SELECT count(*) FROM events WHERE type = 'call.ended'").fetchone() == (
            0,
        )
        spool.write_text(line("3.1") + line("3.2"))
        await import_all(pool, spool_node(spool, tmp_path), Billing(call_events=True))
    rows = db.execute("SELECT data FROM events WHERE type = 'call.ended'").fetchall()
    assert [r[0]["uniqueid"] for r in rows] == ["3.2"]  # new records only
    assert rows[0][0]["owner"] == OWNER and rows[0][0]["billsec"] == 30


@pytest.fixture
async def usage_scene(api: Api, settings: Settings, tmp_path: Path) -> Api:
    """The accounts of the flow; calls on two nodes: B's PBX over A's Munich block (in
    and out), B's own calls (its Berlin block, internal), C's calls over C's block."""
    await scene(api)
    spool_a, spool_b = tmp_path / "a.csv", tmp_path / "b.csv"
    spool_a.write_text(
        line("a.1", billsec=61)  # carrier -> B's phone over A's block
        + line("a.2", answered=False)
        + line("a.3", billsec=5, direction="outbound", number="+49891234560", peer="+4930999999")
        # A ring group: two legs of one call, one answered
        + line("a.4", billsec=7, sequence=0, linkedid="a.4")
        + line("a.4", answered=False, sequence=1, linkedid="a.4")
        + line("a.5", billsec=9, owner=TARGET, pbx="", block="", direction="", number="", peer="")
    )
    spool_b.write_text(
        line("b.1", billsec=100, owner=TARGET, block="ber-main", number="+49301234560")
        + line("b.2", billsec=50, owner=OTHER, pbx=OTHER, block="cgn-main", number="+492211234560")
        + line("b.3", billsec=11, start=T0 - 10 * 86400)  # last month
    )
    async with AsyncConnectionPool(settings.database.url.value, min_size=1, open=False) as pool:
        for name, spool in (("node-a", spool_a), ("node-b", spool_b)):
            await import_all(pool, spool_node(spool, tmp_path, name), Billing())
    return api


NOVEMBER = "from=2026-11-01&to=2026-12-01T00:00:00Z"


def rows_of(answer: dict[str, Any]) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    return {
        (r["block_id"], r["owner"], r["pbx"], r["direction"]): (r["calls"], r["answered"],
                                                                r["billsec"])
        for r in answer["usage"]
    }  # fmt: skip


async def test_each_account_sees_its_blocks_calls_and_its_pbxs_calls(usage_scene: Api) -> None:
    api = usage_scene
    owner = await api.ok("GET", f"/v1/accounts/{OWNER}/usage?{NOVEMBER}")
    # A sees every call over its block, made by B's PBX, billed to A; not B's own calls.
    assert rows_of(owner) == {
        ("muc-main", OWNER, TARGET, "inbound"): (3, 2, 61 + 7),
        ("muc-main", OWNER, TARGET, "outbound"): (1, 1, 5),
    }
    assert owner["total"] == {"calls": 4, "answered": 3, "billsec": 73}
    target = await api.ok("GET", f"/v1/accounts/{TARGET}/usage?{NOVEMBER}")
    # B sees its PBX's calls: over A's block (billed to A), its own block, internal.
    assert rows_of(target) == {
        ("ber-main", TARGET, TARGET, "inbound"): (1, 1, 100),
        ("muc-main", OWNER, TARGET, "inbound"): (3, 2, 68),
        ("muc-main", OWNER, TARGET, "outbound"): (1, 1, 5),
        (None, TARGET, TARGET, "internal"): (1, 1, 9),
    }
    other = await api.ok("GET", f"/v1/accounts/{OTHER}/usage?{NOVEMBER}")
    assert rows_of(other) == {("cgn-main", OTHER, OTHER, "inbound"): (1, 1, 50)}
    october = await api.ok("GET", f"/v1/accounts/{OWNER}/usage?from=2026-10-01&to=2026-11-01")
    assert october["total"] == {"calls": 1, "answered": 1, "billsec": 11}
    # The portal acting for C may not read A's usage.
    await api.problem(403, "acting_customer_forbidden", "GET", f"/v1/accounts/{OWNER}/usage",
                      headers={"X-Acting-Customer": OTHER})  # fmt: skip
    await api.problem(404, "account_not_found", "GET", "/v1/accounts/K999999/usage")


async def test_usage_and_calls_as_csv(usage_scene: Api) -> None:
    api = usage_scene
    response = await api.call("GET", f"/v1/accounts/{OWNER}/usage?{NOVEMBER}",
                              headers={"Accept": "text/csv"})  # fmt: skip
    assert response.status == 200 and response.content_type == "text/csv"
    table = list(csv.DictReader(io.StringIO(await response.text())))
    assert [(r["direction"], r["calls"], r["billsec"]) for r in table] == [
        ("inbound", "3", "68"), ("outbound", "1", "5"),
    ]  # fmt: skip
    response = await api.call("GET", f"/v1/accounts/{OWNER}/calls?{NOVEMBER}&limit=2",
                              headers={"Accept": "text/csv"})  # fmt: skip
    page = list(csv.DictReader(io.StringIO(await response.text())))
    assert [r["uniqueid"] for r in page] == ["a.1", "a.2"]
    assert "node" not in page[0]  # the portal does not see the platform's nodes
    assert response.headers["X-Next-Cursor"]


async def test_the_call_list_pages_by_cursor_and_engineers_see_the_node(usage_scene: Api) -> None:
    api = usage_scene
    seen, after = [], "0"
    while True:
        page = await api.ok("GET", f"/v1/accounts/{OWNER}/calls?{NOVEMBER}&after={after}&limit=2")
        if not page["calls"]:
            assert page["next"] == after
            break
        seen += [(c["uniqueid"], c["sequence"]) for c in page["calls"]]
        after = page["next"]
    assert seen == [("a.1", 0), ("a.2", 0), ("a.3", 0), ("a.4", 0), ("a.4", 1)]
    first = (await api.ok("GET", f"/v1/accounts/{OWNER}/calls?{NOVEMBER}"))["calls"][0]
    assert "node" not in first
    assert first["started_at"] == "2026-11-06T09:00:00Z" and first["billsec"] == 61
    engineer = await api.ok("GET", f"/v1/accounts/{OWNER}/calls?{NOVEMBER}", key=ENGINEER_KEY)
    assert engineer["calls"][0]["node"] == "node-a"


@pytest.mark.parametrize(
    "query,field",
    [
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("from=2026-11-01T00:00:00", "from"),  # no zone
        ("from=2026-12-01&to=2026-11-01", "from"),
        ("from=2024-01-01&to=2026-01-01", "from"),  # longer than 367 days
        ("after=-1", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ],
)
async def test_a_bad_period_or_page_is_a_problem(
    usage_scene: Api, clock: FakeClock, query: str, field: str
) -> None:
    del clock
    problem = await usage_scene.problem(
        422, "invalid_field", "GET", f"/v1/accounts/{OWNER}/calls?{query}"
    )
    assert problem["field"] == field
