"""Shared fixtures: a real PostgreSQL, a real SMTP server, the service on a real port."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller
from panoramisk import Manager
from tier import refuse_in_fast_tier
from waiting import wait_until

from provisioner.api.serving import server_options
from provisioner.app import create_app
from provisioner.db import embedded, pjsip_rows
from provisioner.db.migrate import migrate
from provisioner.settings import ApiKey, Database, Listen, Secret, Secrets, Settings, Smtp
from provisioner.settings.load import load as load_settings

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "asterisk-docker" / "lab"
PORTAL_KEY = "portal-test-key"
ENGINEER_KEY = "engineer-test-key"
# Seals trunk passwords in the tests' databases (a Fernet key, made for the tests).
SECRETS_KEY = "dGVzdHMtb25seS1zZWNyZXRzLWtleS0zMi1ieXRlcyE="


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP both (SIP and AMI ports of the lab), and
    never one handed out before in this run: the kernel may offer a port again as soon as
    the probe closes it, and two phones of one scene once got the same port (the BLF
    test's watcher then received the calls meant for the phone it watched)."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            if port in _GIVEN_PORTS:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _GIVEN_PORTS.add(port)
            return port


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` ports in a row, each free on 127.0.0.1 for TCP and UDP (what
    `lab up --nodes N` takes: its base port plus one per node). Below the kernel's
    ephemeral range (32768 and up here), where free_port's ports are: a port there may be
    the local end of any client connection a moment later, so `base + 1` of a free_port
    once was taken when the lab came to bind it."""
    rng = random.Random()
    while True:
        base = rng.randrange(20000, 32000 - count)
        wanted = range(base, base + count)
        if _GIVEN_PORTS.intersection(wanted):
            continue
        probes: list[socket.socket] = []
        try:
            for port in wanted:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    probe = socket.socket(socket.AF_INET, kind)
                    probes.append(probe)
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        _GIVEN_PORTS.update(wanted)
        return base


# --- PostgreSQL -----------------------------------------------------------------------


# The tests' PostgreSQL servers live in memory where there is a tmpfs: each test clones
# the template database and drops its clone, and on this machine's disk a clone took
# ~0.3 s (its pages written and synced), on tmpfs ~0.01 s. A server's data survives its
# own stop and start there as on disk, which is all the restart tests need.
PG_PARENT = "/dev/shm" if os.access("/dev/shm", os.W_OK) else "/tmp"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """DATABASE_URL if set, else a private pgserver in a short /tmp path (socket limit)."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    folder = Path(tempfile.mkdtemp(prefix="prov-pg-", dir=PG_PARENT))
    try:
        url, server = embedded.start(folder / "pg", stop_at_exit=True)
    except Exception as exc:  # the reason must be in the failure, never a skip
        pytest.fail(f"cannot start the embedded PostgreSQL (pgserver): {exc}")
    yield url
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def _with_db(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **info)


@pytest.fixture(scope="session")
def template_db(pg_url: str) -> str:
    """A database with every migration applied, cloned for each test."""
    name = f"prov_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    async def apply() -> None:
        async with await psycopg.AsyncConnection.connect(_with_db(pg_url, name)) as conn:
            await migrate(conn)

    asyncio.run(apply())
    return name


@pytest.fixture
async def own_database() -> AsyncIterator[tuple[str, Path]]:
    """A PostgreSQL of the test's own (its URL and folder), so stopping or restarting it
    disturbs no other test; removed after."""
    folder = Path(tempfile.mkdtemp(prefix="prov-pgown-", dir=PG_PARENT)) / "pg"
    url, server = await asyncio.to_thread(embedded.start, folder)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
    try:
        yield url, folder
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture
def db_url(pg_url: str, template_db: str) -> Iterator[str]:
    name = f"prov_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_db(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection to the test's database, for looking at what the service wrote."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table we own: to prove that a refused request changed nothing.
    The tables come from the database's catalog, so a new table is never left out."""
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename NOT IN ('schema_migrations', 'mail_outbox') ORDER BY tablename"
        )
    ]
    assert "extensions" in tables and "config_revisions" in tables
    rows = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    # Which mails exist is the request's doing; whether they went out yet is the sender's.
    rows["mail_outbox"] = conn.execute(
        "SELECT id, message_id, recipient, subject, body FROM mail_outbox ORDER BY id"
    ).fetchall()
    return rows


# --- SMTP ----------------------------------------------------------------------------


class Inbox:
    """What a real SMTP server (aiosmtpd) received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[EmailMessage] = []
        self.fail_next = 0
        self.delay = 0.0  # seconds each DATA takes, as a slow server's would
        self.receiving = 0  # DATA commands under way

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.receiving += 1
        try:
            await asyncio.sleep(self.delay)
            return self._accept(envelope)
        finally:
            self.receiving -= 1

    def _accept(self, envelope: Any) -> str:
        if self.fail_next > 0:
            self.fail_next -= 1
            return "451 4.3.0 try again later"
        message = BytesParser(policy=default_policy).parsebytes(envelope.content)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        await wait_until(lambda: len(self.messages) >= count, f"{count} mails", timeout)
        return self.messages

    async def wait_for_message(self, id_part: str, timeout: float = 10.0) -> EmailMessage:
        """The mail whose Message-ID contains `id_part` (kind, assignment id, side)."""

        def found() -> EmailMessage | None:
            return next((m for m in self.messages if id_part in str(m["Message-ID"])), None)

        return await wait_until(found, f"the mail {id_part}", timeout)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


def body_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def confirm_link(message: EmailMessage) -> str:
    match = re.search(r"https?://\S+/confirm/\S+", body_of(message))
    assert match, body_of(message)
    return match.group(0)


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    handler = Inbox(free_port())
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


# --- The service ---------------------------------------------------------------------


@dataclass
class FakeClock:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 2, 9, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def make_settings(
    db_url: str, *, smtp_host: str, smtp_port: int, port: int, data: Path
) -> Settings:
    base = load_settings(env={})
    return replace(
        base,
        listen=Listen(port=port),
        public_base_url=f"http://127.0.0.1:{port}",
        database=Database(url=Secret(db_url)),
        data_dir=data,
        smtp=Smtp(
            host=smtp_host,
            port=smtp_port,
            sender="provisioner@operator.example",
            timeout_seconds=5,
        ),
        api_keys=(
            ApiKey(name="portal-backend", role="portal", key_sha256=sha256(PORTAL_KEY)),
            ApiKey(name="noc", role="engineer", key_sha256=sha256(ENGINEER_KEY)),
        ),
        secrets=Secrets(keys=(Secret(SECRETS_KEY),)),
    )


@pytest.fixture
def settings(db_url: str, inbox: Inbox, tmp_path: Path) -> Settings:
    return make_settings(
        db_url, smtp_host="127.0.0.1", smtp_port=inbox.port, port=free_port(), data=tmp_path
    )


class Api:
    """The test client, as the portal backend uses the API."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        key: str = PORTAL_KEY,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> ClientResponse:
        all_headers = {"Authorization": f"Bearer {key}"} if key else {}
        all_headers.update(headers or {})
        return await self.client.request(method, path, json=json, data=data, headers=all_headers)

    async def ok(self, method: str, path: str, json: Any = None, **kwargs: Any) -> Any:
        response = await self.call(method, path, json, **kwargs)
        body = await response.text()
        assert response.status < 300, f"{method} {path}: {response.status} {body}"
        return await response.json()

    async def problem(
        self, status: int, code: str, method: str, path: str, json: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        response = await self.call(method, path, json, **kwargs)
        text = await response.text()
        assert response.status == status, f"{method} {path}: {response.status} {text}"
        assert response.content_type == "application/problem+json", text
        problem: dict[str, Any] = await response.json(content_type=None)
        assert problem["code"] == code, problem
        assert problem["status"] == status
        assert "Traceback" not in text
        return problem


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings, clock=clock)
    server = TestServer(app, host="127.0.0.1", port=settings.listen.port)
    # TestServer takes the server's options at its start, not in its constructor.
    await server.start_server(**server_options(settings))
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def api(service: TestClient[Any, Any]) -> Api:
    return Api(service)


# --- Test tiers ----------------------------------------------------------------------

# A test is marked by what it uses: one that asks, directly or through other fixtures,
# for the lab or for Docker's engine is `lab` or `docker`, whatever file it is in.
# `make test-fast` leaves those out, and `browser` and `slow` (fixed-duration) ones too.
MARKED_BY_FIXTURE = {
    "lab": "lab",
    "second_lab": "lab",
    "realtime_lab": "lab",
    "mode_lab": "lab",  # reaches its lab through request.getfixturevalue
    "docker_engine": "docker",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, marker in MARKED_BY_FIXTURE.items():
            if fixture in used:
                item.add_marker(marker)


# --- The Asterisk lab ----------------------------------------------------------------


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
    up += ["--ami-port", str(free_port()), "--sip-port", str(free_port())]
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


# --- Docker's engine -------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A running Docker engine (Debian's docker.io; make test installs it): the one that
    runs, or a `dockerd` started here and stopped after the session. One that cannot be
    had FAILS the tests, with why."""
    refuse_in_fast_tier("Docker engine")
    for tool in ("docker", "dockerd", "docker-compose"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install docker.io docker-compose"
                        " (scripts/install-system-deps does)")  # fmt: skip

    def engine_answers() -> bool:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
        return probe.returncode == 0

    if engine_answers():
        yield
        return
    log = Path(tempfile.mkdtemp(prefix="prov-dockerd-")) / "dockerd.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not engine_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(log.parent, ignore_errors=True)
