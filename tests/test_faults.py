"""Faults we can name, each against the real components, each ending with nothing lost,
nothing done twice, and the state consistent. (PostgreSQL restarting and SMTP refusing
are in tests/test_resilience.py and tests/test_mail.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fixtures_lab import Lab
from fixtures_mail import Inbox
from fixtures_service import Api
from helpers import OTHER, TARGET
from lab_helpers import (
    branch_scene,
    cologne_pbx,
    console_env,
    lab_command,
    lab_node,
    lab_service,
    lab_up_again,
    wait_applied,
)
from waiting import wait_until

from provisioner.app import create_app
from provisioner.asterisk import files
from provisioner.settings import Node, Settings

PHONE_101 = {"name": "Ben Berlin", "site_block": "ber-main"}


def asterisk_pid(lab: Lab) -> int:
    return int(json.loads((lab.folder / "lab.json").read_text())["pid"])


@contextlib.contextmanager
def asterisk_stopped(lab: Lab) -> Iterator[int]:
    """Asterisk frozen (SIGSTOP): its AMI port still accepts, but nothing answers."""
    pid = asterisk_pid(lab)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def until(condition: Any, timeout: float, what: str) -> float:
    """Poll until condition() is true; the seconds it took."""
    started = time.monotonic()
    await wait_until(condition, what, timeout)
    return time.monotonic() - started


def worker(node: Node, db_url: str) -> subprocess.Popen[str]:
    """`provisioner worker`: another instance of the service, as its own process."""
    env = {**console_env(node, db_url), "PROVISIONER_ASTERISK_RETRY_SECONDS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "provisioner", "worker"], env=env, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def api_only(settings: Settings, node: Node) -> AsyncIterator[Api]:
    """The API without workers: the appliers in these tests are separate processes."""
    app = create_app(
        replace(settings, asterisk=replace(settings.asterisk, nodes=(node,))), run_workers=False
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client)
    finally:
        await client.close()


async def applied_with(api: Api, customer: str, text: str, timeout: float) -> dict[str, Any]:
    """Until the PBX's applied config contains `text` (not merely: is applied)."""

    async def applied() -> dict[str, Any] | None:
        state = await wait_applied(api, customer, timeout=timeout)
        return state if any(text in f for f in state["files"].values()) else None

    return await wait_until(applied, f"{text} not applied for {customer}", timeout, interval=0.2)


def revisions_with(db: psycopg.Connection[Any], text: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM config_revisions WHERE files::text LIKE %s", (f"%{text}%",)
    ).fetchone()
    return int(row[0]) if row else 0


async def test_an_instance_killed_mid_round_loses_its_jobs_to_another_within_a_lease(
    settings: Settings, clean_lab: Lab, inbox: Inbox, db_url: str, db: psycopg.Connection[Any]
) -> None:
    """Instance A has written B's new dialplan file (the first of a round's writes) and
    waits for AMI when it is killed (-9). Instance B takes the job over once A's lease
    runs out, applies it once, and sees the file A wrote as its own (no hand edit)."""
    node = lab_node(clean_lab)
    first = worker(node, db_url)
    second: subprocess.Popen[str] | None = None
    try:
        async with api_only(settings, node) as api:
            await branch_scene(api)
            await wait_applied(api, TARGET, timeout=40)
            pjsip = clean_lab.output_dir / "pjsip/tenant-k100200.conf"
            dialplan = clean_lab.output_dir / "dialplan/tenant-k100200.conf"
            with asterisk_stopped(clean_lab):
                await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/101", PHONE_101)
                await until(lambda: "exten => 101," in dialplan.read_text(), 10, "file written")
                first.send_signal(signal.SIGKILL)
                first.wait(10)
            killed = time.monotonic()
            second = worker(node, db_url)
            state = await applied_with(api, TARGET, "[k100200-101]", timeout=60)
            took = time.monotonic() - killed
        # One lease (15 s), a retry or two, and the worker's idle poll: well within 45 s.
        assert took < 45, took
        assert state["apply_state"] == "applied" and state["apply_error"] is None, state
        assert revisions_with(db, "[k100200-101]") == 1
        assert not list(pjsip.parent.glob("*.hand-edited-*"))
        assert "k100200-101" in clean_lab.cli("pjsip show endpoints")
        assert db.execute("SELECT count(*) FROM apply_queue").fetchone() == (0,)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)


async def test_asterisk_killed_mid_round_then_started_again(
    settings: Settings, clean_lab: Lab, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    async with lab_service(settings, clean_lab) as (api, _node):
        await branch_scene(api)
        await wait_applied(api, TARGET)
        dialplan = clean_lab.output_dir / "dialplan/tenant-k100200.conf"
        with asterisk_stopped(clean_lab) as pid:
            await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/101", PHONE_101)
            await until(lambda: "exten => 101," in dialplan.read_text(), 10, "file written")
            os.kill(pid, signal.SIGKILL)
        await until(lambda: lab_command(clean_lab, "status").returncode != 0, 20, "lab gone")
        try:
            waiting = await api.ok("GET", f"/v1/accounts/{TARGET}/pbx/config")
            assert waiting["apply_state"] in ("pending", "applied")
        finally:
            await lab_up_again(clean_lab)
        state = await applied_with(api, TARGET, "[k100200-101]", timeout=60)
        assert state["apply_error"] is None, state
        assert "k100200-101" in clean_lab.cli("pjsip show endpoints")
        assert revisions_with(db, "[k100200-101]") == 1


class DroppingProxy:
    """A TCP proxy in front of AMI that cuts the connection once, the first time the
    provisioner asks for a module reload."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        ami_r, ami_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, watch: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(65536):
                    if watch and b"Action: Reload" in data and not self.dropped:
                        self.dropped += 1
                        break
                    w.write(data)
                    await w.drain()
            for writer in (client_w, ami_w):
                writer.close()

        await asyncio.gather(pipe(client_r, ami_w, True), pipe(ami_r, client_w, False))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_ami_dropped_mid_round_is_retried_at_once(
    settings: Settings, clean_lab: Lab, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    proxy = DroppingProxy(clean_lab.ami_port)
    port = await proxy.start()
    node = replace(lab_node(clean_lab), ami_port=port)
    app = create_app(
        replace(settings, asterisk=replace(settings.asterisk, nodes=(node,), retry_seconds=1))
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        api = Api(client)
        started = time.monotonic()
        await branch_scene(api)
        state = await wait_applied(api, TARGET, timeout=40)
        # The lost connection ends the round at once (not after the 30 s action timeout)
        # and the retry a second later goes through.
        assert proxy.dropped == 1
        assert time.monotonic() - started < 20
        assert state["apply_error"] is None
        assert "k100200-100" in clean_lab.cli("pjsip show endpoints")
        assert db.execute("SELECT count(*) FROM config_revisions").fetchone() == (1,)
    finally:
        await client.close()
        await proxy.close()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """The folder read-only for this machine (a bind mount): even root cannot write."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


async def test_an_unwritable_output_folder_delays_the_apply_and_loses_nothing(
    settings: Settings, clean_lab: Lab, inbox: Inbox
) -> None:
    async with lab_service(settings, clean_lab) as (api, _node):
        await branch_scene(api)
        await cologne_pbx(api)
        await wait_applied(api, TARGET)
        await wait_applied(api, OTHER)
        with read_only(clean_lab.output_dir / "pjsip"):
            await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/101", PHONE_101)

            async def failed() -> dict[str, Any] | None:
                state = await api.ok("GET", f"/v1/accounts/{TARGET}/pbx/config")
                return state if state["apply_state"] == "failed" else None

            state = await wait_until(failed, "the apply did not fail", 20, interval=0.1)
            assert "Read-only file system" in state["apply_error"], state
        state = await applied_with(api, TARGET, "[k100200-101]", timeout=60)
        assert state["apply_error"] is None
        assert "k100200-101" in clean_lab.cli("pjsip show endpoints")
        other = await api.ok("GET", f"/v1/accounts/{OTHER}/pbx/config")
        assert other["apply_state"] == "applied"


def test_a_full_disk_keeps_the_old_file_and_leaves_no_debris() -> None:
    """A real full file system (a 64 KiB tmpfs): the write fails with ENOSPC, the file
    Asterisk reads is the old one, and no temp file is left behind."""
    folder = Path(tempfile.mkdtemp(prefix="prov-full-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True)
    try:
        files.write_atomic(folder, "pjsip/tenant-x.conf", "old\n")
        with pytest.raises(OSError) as raised:
            files.write_atomic(folder, "pjsip/tenant-x.conf", "new\n" * 100_000)
        assert raised.value.errno == errno.ENOSPC
        assert (folder / "pjsip/tenant-x.conf").read_text() == "old\n"
        assert sorted(p.name for p in (folder / "pjsip").iterdir()) == ["tenant-x.conf"]
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()
