"""Shared pieces of the tests that apply config to the lab's Asterisk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import psycopg
from aiohttp.test_utils import TestClient, TestServer
from fixtures_lab import LAB, REALTIME_PASSWORD, REALTIME_ROLE, Lab
from fixtures_service import Api
from helpers import BLOCK, OTHER, OWNER, TARGET, scene
from ports import free_port
from waiting import wait_until, wait_until_sync

from provisioner.app import create_app
from provisioner.db import pjsip_rows
from provisioner.settings import Node, Secret, Settings

# The carrier (SBC) lives on its own loopback address, so identifying it by address
# never catches the phones, which all come from 127.0.0.1.
CARRIER_HOST = "127.0.0.2"


def lab_node(lab: Lab) -> Node:
    return Node(
        name="default", ami_host="127.0.0.1", ami_port=lab.ami_port,
        ami_username=lab.ami_user, ami_secret=Secret(lab.ami_secret),
        output_dir=lab.output_dir, carrier_host=CARRIER_HOST, carrier_port=free_port(),
        file_group=lab.file_group, pjsip=lab.pjsip, cdr_file=lab.cdr_file,
    )  # fmt: skip


def clean_output(lab: Lab) -> None:
    """No PBX's config on the lab, and no call record in its spool: each test's own.
    An earlier test's calls are hung up first, and the spool emptied once none is left:
    a call still ringing (its caller gone with that test) writes its record when it
    ends, which must not land in the next test's spool."""
    lab.cli("channel request hangup all")
    wait_until_sync(lambda: re.search(r"^0 active channels", lab.cli("core show channels count"),
                                      re.MULTILINE),
                    "calls of an earlier test still up on the lab")  # fmt: skip
    if lab.cdr_file.exists():  # Asterisk's: emptied, never made here (Asterisk writes it)
        os.truncate(lab.cdr_file, 0)
    for kind in ("pjsip", "dialplan"):
        for path in (lab.output_dir / kind).iterdir():
            if not path.name.startswith("00-"):
                path.unlink()
    # The applier's last-good copies (and anything else it keeps there) go too: an
    # earlier test's PBX must leave nothing a later test could read as its own.
    for path in lab.output_dir.iterdir():
        if path.name not in ("pjsip", "dialplan"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    lab.cli("module reload res_pjsip.so")
    lab.cli("dialplan reload")
    if lab.pjsip == "realtime":
        for kind in ("endpoint", "aor", "auth"):
            lab.cli(f"sorcery memory cache expire res_pjsip/{kind}")


def point_at_database(lab: Lab, url: str) -> None:
    """A realtime lab reads its rows from this database from now on (each test has its
    own): res_pgsql.conf's dbname, and res_config_pgsql reloaded (it reconnects)."""
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    conf = lab.folder / "etc" / "res_pgsql.conf"
    text = re.sub(r"(?m)^dbname = .*$", f"dbname = {dbname}", conf.read_text())
    conf.write_text(text)
    lab.cli("module reload res_config_pgsql.so")
    status = lab.cli("realtime show pgsql status")
    assert f"Connected to {dbname}@" in status, status


async def wait_applied(api: Api, customer: str, timeout: float = 20) -> dict[str, Any]:
    """Until the PBX's latest revision is live and stays so (no change queued behind it)."""

    seen: list[dict[str, Any]] = [{}]

    async def applied() -> dict[str, Any] | None:
        state: dict[str, Any] = await api.ok("GET", f"/v1/accounts/{customer}/pbx/config")
        seen[0] = state
        if state["apply_state"] != "applied" or state["applied_revision"] != state["revision"]:
            return None
        # Stays so: a change queued right behind it would show as pending by now.
        await asyncio.sleep(0.3)
        return (
            state if await api.ok("GET", f"/v1/accounts/{customer}/pbx/config") == state else None
        )

    return await wait_until(
        applied, lambda: f"{customer} not applied: {seen[0]}", timeout, interval=0.1
    )


@contextlib.asynccontextmanager
async def lab_service(
    settings: Settings, lab: Lab, nodes: tuple[Node, ...] | None = None
) -> AsyncIterator[tuple[Api, Node]]:
    """The service on a real port, applying to the lab (real time: the applier's
    backoff runs on the clock, not the fake one); `nodes` to give it more than one."""
    node = lab_node(lab)
    app = create_app(
        replace(
            settings,
            asterisk=replace(settings.asterisk, nodes=nodes or (node,), retry_seconds=1),
        )
    )
    server = TestServer(app, host="127.0.0.1", port=settings.listen.port)
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield Api(client), node
    finally:
        await client.close()


async def branch_scene(api: Api) -> dict[str, Any]:
    """The accounts of helpers.scene, plus B's Berlin block and phone 100 (the default
    target of B's Berlin numbers), and trunks for both blocks. Returns phone 100 as
    created (with its password)."""
    await scene(api)
    await api.ok(
        "PUT",
        f"/v1/accounts/{TARGET}/blocks/ber-main",
        {
            "number": "+4930123456",
            "range": "0-99",
            "mode": "pbx",
            "trunk": {"username": "k100200-ber", "password": "Berlin-trunk-1"},
        },
    )
    anna: dict[str, Any] = await api.ok(
        "PUT",
        f"/v1/accounts/{TARGET}/pbx/extensions/100",
        {
            "name": "Anna Berlin",
            "site_block": "ber-main",
            "pickup_group": "sales",
        },
    )
    await api.ok(
        "PUT", f"/v1/accounts/{TARGET}/blocks/ber-main",
        {"number": "+4930123456", "range": "0-99", "mode": "pbx", "default_target": "100"},
    )  # fmt: skip
    await api.ok(
        "PUT",
        f"/v1/accounts/{OWNER}/blocks/{BLOCK}",
        {
            "number": "+4989123456",
            "range": "0-99",
            "mode": "pbx",
            "trunk": {"username": "k200300-muc", "password": "Munich-trunk-1"},
        },
    )
    return anna


async def cologne_pbx(api: Api) -> dict[str, Any]:
    """C (OTHER, whose account and PBX helpers.scene made) gets its Cologne block and a
    phone 100 of its own. Returns the phone as created (with its password)."""
    await api.ok("PUT", f"/v1/accounts/{OTHER}/blocks/cgn-main",
                 {"number": "+4922112345", "range": "0-9", "mode": "pbx"})  # fmt: skip
    emil: dict[str, Any] = await api.ok(
        "PUT", f"/v1/accounts/{OTHER}/pbx/extensions/100",
        {"name": "Emil Köln", "site_block": "cgn-main"},
    )  # fmt: skip
    return emil


def console(node: Node, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`provisioner <args>` as an engineer runs it on the lab's node."""
    return subprocess.run(
        [sys.executable, "-m", "provisioner", *args],
        capture_output=True, text=True, env=console_env(node, db_url), timeout=120, check=False,
    )  # fmt: skip


def console_env(
    nodes: Node | tuple[Node, ...], db_url: str, *, router_url: str = ""
) -> dict[str, str]:
    """The environment of a `provisioner` console command on the lab's node(s), and the
    router if there is one."""
    import json

    from fixtures_service import SECRETS_KEY

    def entry(n: Node) -> dict[str, object]:
        return {
            "name": n.name, "ami_port": n.ami_port, "ami_username": n.ami_username,
            "ami_secret": n.ami_secret.value, "output_dir": str(n.output_dir),
            "carrier_host": n.carrier_host, "carrier_port": n.carrier_port,
            "file_group": n.file_group, "sip_host": n.sip_host, "sip_port": n.sip_port,
            "router_host": n.router_host, "pjsip": n.pjsip,
        }  # fmt: skip

    entries = [entry(n) for n in (nodes if isinstance(nodes, tuple) else (nodes,))]
    return {
        "PROVISIONER_DATABASE_URL": db_url,
        "PROVISIONER_ASTERISK_NODES": json.dumps(entries),
        "PROVISIONER_SECRETS_KEYS": json.dumps([SECRETS_KEY]),
        "PROVISIONER_ROUTER_RPC_URL": router_url,
        "PATH": "/usr/bin:/bin",
    }


def lab_command(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """asterisk-docker/lab on this lab (up, down, status, ...)."""
    return subprocess.run(
        [str(LAB), "--dir", str(lab.folder), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


async def until_channel(lab: Lab, prefix: str, state: str, timeout: float = 15) -> None:
    """Until Asterisk has a channel named prefix... in `state` (Ringing, Up, ...)."""

    async def found() -> bool:
        listing = await asyncio.to_thread(lab.cli, "core show channels concise")
        return any(
            f[0].startswith(prefix) and len(f) > 4 and f[4] == state
            for f in (line.split("!") for line in listing.splitlines())
        )

    await wait_until(found, f"no channel {prefix}... in state {state}", timeout)


async def until_subscribed(lab: Lab, endpoint: str, timeout: float = 15) -> None:
    """Until Asterisk holds an inbound subscription (BLF) from this endpoint."""

    async def found() -> bool:
        return endpoint in await asyncio.to_thread(lab.cli, "pjsip show subscriptions inbound")

    await wait_until(found, f"no subscription from {endpoint}", timeout)


async def lab_up_again(lab: Lab) -> None:
    """Start the lab's Asterisk again on its own ports, after a test stopped or killed it."""
    up = await asyncio.to_thread(
        lab_command, lab, "up", "--ami-port", str(lab.ami_port), "--sip-port", str(lab.sip_port)
    )
    assert up.returncode == 0, up.stdout + up.stderr


async def realtime_node(lab: Lab, db_url: str, node: str) -> None:
    """A realtime lab as the test's node `node`: its reader role reads that node's rows
    in this test's database, its folder and caches empty. (Emptied again by the next
    test that takes it: `clean_realtime_lab` or this.)"""
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await pjsip_rows.make_reader(conn, REALTIME_ROLE, REALTIME_PASSWORD, node)
        await conn.commit()
    point_at_database(lab, db_url)
    clean_output(lab)
