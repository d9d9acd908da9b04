"""The Asterisk lab (asterisk-docker/lab): session labs on free loopback ports, each
PJSIP mode, AMI connections, and a clean output folder per test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from panoramisk import Manager
from ports import free_ports_in_a_row
from tier import refuse_in_fast_tier

from provisioner.db import pjsip_rows

LAB = Path(__file__).resolve().parent.parent / "asterisk-docker" / "lab"


@dataclass(frozen=True)
class Lab:
    """A running lab Asterisk (asterisk-docker/lab) on free loopback ports."""

    folder: Path
    ami_port: int
    sip_port: int
    ami_user: str
    ami_secret: str
    output_dir: Path
    file_group: int
    pjsip: str = "files"  # realtime: its tenants' PJSIP objects come from PostgreSQL

    @property
    def cdr_file(self) -> Path:
        """Its CDR spool (asterisk-docker/conf/cdr_custom.conf), which the service imports."""
        return self.folder / "log" / "cdr-custom" / "provisioner.csv"

    def cli(self, command: str) -> str:
        done = subprocess.run(
            [str(LAB), "--dir", str(self.folder), "cli", command],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"lab cli {command!r}: {done.stdout}{done.stderr}"
        return done.stdout


@contextlib.contextmanager
def running_lab(prefix: str, pjsip_db: str = "") -> Iterator[Lab]:
    """A lab Asterisk on free ports, stopped and removed after; a lab that cannot start
    FAILS the tests, with why. `pjsip_db`: a realtime node reading through that URL."""
    refuse_in_fast_tier("Asterisk")
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    up = [str(LAB), "--dir", str(folder), "up"]
    # Below the kernel's ephemeral range, as 5038 and 5060 are: a killed node's port in
    # that range may become any client socket's local end, and a SIP peer there answered
    # the router's probes for the dead node once (it flapped up).
    base = free_ports_in_a_row(2)
    up += ["--ami-port", str(base), "--sip-port", str(base + 1)]
    if pjsip_db:
        up += ["--pjsip-db", pjsip_db]
    try:
        done = subprocess.run(up, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the Asterisk lab did not start within 15 minutes: {exc}")
    if done.returncode != 0:
        pytest.fail(f"the Asterisk lab did not start:\n{done.stdout}{done.stderr}")
    state = json.loads((folder / "lab.json").read_text())
    try:
        yield Lab(
            folder=folder,
            ami_port=state["ami_port"],
            sip_port=state["sip_port"],
            ami_user=state["ami_user"],
            ami_secret=state["ami_secret"],
            output_dir=Path(state["output_dir"]),
            file_group=state["file_group"],
            pjsip=state.get("pjsip", "files"),
        )
    finally:
        subprocess.run(
            [str(LAB), "--dir", str(folder), "down"], capture_output=True, timeout=60, check=False
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The session's lab Asterisk (node `default` in the tests)."""
    with running_lab("prov-lab-") as started:
        yield started


@pytest.fixture(scope="session")
def second_lab(lab: Lab) -> Iterator[Lab]:
    """A second Asterisk node beside `lab`, for moves and the router (started after it:
    the first lab builds the shared root filesystem)."""
    with running_lab("prov-lab2-") as started:
        yield started


# The login a realtime lab's Asterisk reads its rows with (provisioner pjsip-reader);
# each test's database gets its grants, and the lab is pointed at that database.
REALTIME_ROLE, REALTIME_PASSWORD = "prov_lab_realtime", "lab-realtime-only"


@pytest.fixture(scope="session")
def realtime_lab(lab: Lab, pg_url: str) -> Iterator[Lab]:
    """A lab node with `pjsip: realtime`: endpoints, AORs and auths from PostgreSQL."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (REALTIME_ROLE,)
        ).fetchone():
            conn.execute(f"CREATE ROLE {REALTIME_ROLE} LOGIN PASSWORD '{REALTIME_PASSWORD}'")
    info = psycopg.conninfo.conninfo_to_dict(pg_url)
    info.update(user=REALTIME_ROLE, password=REALTIME_PASSWORD)
    with running_lab("prov-labrt-", psycopg.conninfo.make_conninfo("", **info)) as started:
        yield started


@pytest.fixture
async def clean_realtime_lab(realtime_lab: Lab, db_url: str) -> AsyncIterator[Lab]:
    """The realtime lab reading this test's database (its reader role granted there),
    with an empty provisioner folder and empty caches, before and after the test."""
    from lab_helpers import clean_output, point_at_database

    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await pjsip_rows.make_reader(conn, REALTIME_ROLE, REALTIME_PASSWORD, "default")
        await conn.commit()
    point_at_database(realtime_lab, db_url)
    clean_output(realtime_lab)
    yield realtime_lab
    clean_output(realtime_lab)


@pytest.fixture(params=["files", "realtime"])
def mode_lab(request: pytest.FixtureRequest) -> Lab:
    """The lab in each PJSIP mode: a test that takes it runs against both."""
    name = "clean_lab" if request.param == "files" else "clean_realtime_lab"
    found: Lab = request.getfixturevalue(name)
    return found


@contextlib.asynccontextmanager
async def ami_of(lab: Lab) -> AsyncIterator[Manager]:
    """An AMI connection (panoramisk) to a lab."""
    manager = Manager(
        loop=asyncio.get_running_loop(),
        host="127.0.0.1",
        port=lab.ami_port,
        username=lab.ami_user,
        secret=lab.ami_secret,
        ping_delay=0,
    )
    try:
        await asyncio.wait_for(manager.connect(), 10)
    except Exception as exc:
        pytest.fail(f"cannot log in to the lab's AMI on port {lab.ami_port}: {exc!r}")
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture
async def ami(lab: Lab) -> AsyncIterator[Manager]:
    """An AMI connection (panoramisk) to the lab."""
    async with ami_of(lab) as manager:
        yield manager


@pytest.fixture
def clean_lab(lab: Lab) -> Iterator[Lab]:
    """The lab with an empty provisioner folder, before and after the test."""
    from lab_helpers import clean_output

    clean_output(lab)
    yield lab
    clean_output(lab)


@pytest.fixture
def clean_second_lab(second_lab: Lab) -> Iterator[Lab]:
    from lab_helpers import clean_output

    clean_output(second_lab)
    yield second_lab
    clean_output(second_lab)
