"""The PBX model over the API: extensions, ring groups, trunks; refusals change nothing."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg
import pytest
from fixtures_db import snapshot
from fixtures_mail import Inbox
from fixtures_service import SECRETS_KEY, Api
from helpers import BLOCK, OTHER, OWNER, TARGET, path_of, request_assignment, scene

from provisioner.db import accounts as db_accounts
from provisioner.render.load import load_view

PBX = f"/v1/accounts/{TARGET}/pbx"
BERLIN = {"number": "+4930123456", "range": "0-99", "mode": "pbx"}


async def berlin(api: Api) -> None:
    await scene(api)
    await api.ok("PUT", f"/v1/accounts/{TARGET}/blocks/ber-main", {
        **BERLIN, "trunk": {"username": "k100200-ber", "password": "Berlin-trunk-1"},
    })  # fmt: skip
    await api.ok("PUT", f"{PBX}/extensions/100", {"name": "Anna", "site_block": "ber-main"})
    await api.ok("PUT", f"{PBX}/blocks/ber-main", {"default_target": "100"})


async def test_extension_password_is_shown_once(api: Api, db: psycopg.Connection[Any]) -> None:
    await scene(api)
    await api.ok("PUT", f"/v1/accounts/{TARGET}/blocks/ber-main", BERLIN)
    created = await api.call(
        "PUT", f"{PBX}/extensions/101",
        {"name": "Ben", "site_block": "ber-main", "did": "+49301234561"},
    )  # fmt: skip
    body = await created.json()
    assert created.status == 201 and len(body["sip_password"]) >= 20
    assert body["sip_username"] == "k100200-101" and body["effective_caller_id"] == "+49301234561"
    again = await api.ok(
        "PUT", f"{PBX}/extensions/101", {"name": "Ben B", "site_block": "ber-main"}
    )
    assert "sip_password" not in again and again["name"] == "Ben B"
    listed = await api.ok("GET", f"{PBX}/extensions")
    assert all("sip_password" not in e for e in listed["extensions"])
    # Every change queued an apply of the PBX, coalesced into one row.
    assert db.execute("SELECT count(*) FROM apply_queue").fetchone() == (1,)


async def test_trunk_password_is_never_returned(api: Api) -> None:
    await berlin(api)
    blocks = await api.call("GET", f"/v1/accounts/{TARGET}/blocks")
    assert "Berlin-trunk-1" not in await blocks.text()


async def test_ring_groups(api: Api) -> None:
    await berlin(api)
    await api.ok("PUT", f"{PBX}/extensions/101", {"name": "Ben", "site_block": "ber-main"})
    group = await api.ok("PUT", f"{PBX}/ring-groups/600", {
        "name": "Reception", "strategy": "hunt", "members": ["101", "100"], "ring_seconds": 15,
    })  # fmt: skip
    assert group["members"] == ["101", "100"]
    listed = await api.ok("GET", f"{PBX}/ring-groups")
    assert [g["ext"] for g in listed["ring_groups"]] == ["600"]


CASES: list[tuple[int, str, str, str, Any]] = [
    (
        422,
        "reserved_extension",
        "PUT",
        f"{PBX}/extensions/112",
        {"name": "x", "site_block": "ber-main"},
    ),
    (
        422,
        "reserved_extension",
        "PUT",
        f"{PBX}/extensions/110",
        {"name": "x", "site_block": "ber-main"},
    ),
    (
        422,
        "reserved_extension",
        "PUT",
        f"{PBX}/extensions/11833",
        {"name": "x", "site_block": "ber-main"},
    ),
    (
        422,
        "invalid_extension",
        "PUT",
        f"{PBX}/extensions/0100",
        {"name": "x", "site_block": "ber-main"},
    ),
    (
        422,
        "invalid_extension",
        "PUT",
        f"{PBX}/extensions/1",
        {"name": "x", "site_block": "ber-main"},
    ),
    (
        422,
        "site_block_not_used",
        "PUT",
        f"{PBX}/extensions/102",
        {"name": "x", "site_block": BLOCK},
    ),
    (
        422,
        "did_not_in_pbx",
        "PUT",
        f"{PBX}/extensions/102",
        {"name": "x", "site_block": "ber-main", "did": "+49891234560"},
    ),
    (
        422,
        "invalid_pickup_group",
        "PUT",
        f"{PBX}/extensions/102",
        {"name": "x", "site_block": "ber-main", "pickup_group": "Sales Team"},
    ),
    (
        422,
        "invalid_field",
        "PUT",
        f"{PBX}/extensions/102",
        {"name": "a\nb", "site_block": "ber-main"},
    ),
    (
        422,
        "unknown_member",
        "PUT",
        f"{PBX}/ring-groups/600",
        {"name": "x", "strategy": "ringall", "members": ["999"], "ring_seconds": 20},
    ),
    (
        422,
        "invalid_field",
        "PUT",
        f"{PBX}/ring-groups/600",
        {"name": "x", "strategy": "random", "members": ["100"], "ring_seconds": 20},
    ),
    (
        422,
        "invalid_type",
        "PUT",
        f"{PBX}/ring-groups/600",
        {"name": "x", "strategy": "ringall", "members": ["100"], "ring_seconds": "20"},
    ),
    (
        409,
        "ext_taken",
        "PUT",
        f"{PBX}/ring-groups/100",
        {"name": "x", "strategy": "ringall", "members": ["100"], "ring_seconds": 20},
    ),
    (
        422,
        "invalid_trunk",
        "PUT",
        f"/v1/accounts/{TARGET}/blocks/ber-main",
        {**BERLIN, "trunk": {"username": "u", "password": "abc;def=ghi"}},
    ),
    (
        422,
        "invalid_field",  # a line break is refused in any text, before the trunk rules
        "PUT",
        f"/v1/accounts/{TARGET}/blocks/ber-main",
        {**BERLIN, "trunk": {"username": "u\n[x]", "password": "long-enough"}},
    ),
    (
        422,
        "invalid_trunk",
        "PUT",
        f"/v1/accounts/{TARGET}/blocks/ber-main",
        {**BERLIN, "trunk": {"username": "u [x]", "password": "long-enough"}},
    ),
    (
        422,
        "invalid_extension",
        "PUT",
        f"/v1/accounts/{TARGET}/blocks/ber-main",
        {**BERLIN, "default_target": "1;2"},
    ),
    (
        404,
        "pbx_not_found",
        "PUT",
        f"/v1/accounts/{OWNER}/pbx/extensions/100",
        {"name": "x", "site_block": BLOCK},
    ),
    (422, "invalid_field", "GET", f"{PBX}/config/diff?from=abc", None),
    (404, "revision_not_found", "GET", f"{PBX}/config/diff?from=1&to=7", None),
]


@pytest.mark.parametrize(
    ("status", "code", "method", "path", "body"), CASES, ids=[f"{c[3]} {c[1]}" for c in CASES]
)
async def test_refused_and_nothing_changed(
    api: Api, db: psycopg.Connection[Any], status: int, code: str, method: str, path: str,
    body: Any,
) -> None:  # fmt: skip
    await berlin(api)
    before = snapshot(db)
    await api.problem(status, code, method, path, body)
    assert snapshot(db) == before


RING = {"name": "x", "strategy": "ringall", "members": ["100"], "ring_seconds": 20}
TRUNK = {"username": "u", "password": "long-enough"}

# (body's path, body, code, field): each refused by a rule of the route's schema in
# openapi.yaml (api/body.py validates against the document as written).
SCHEMA_RULES: list[tuple[str, dict[str, Any], str, str]] = [
    ("pbx/ring-groups/600", {**RING, "members": ["100", "100"]}, "invalid_field", "members"),
    ("pbx/ring-groups/600", {**RING, "ring_seconds": 20.0}, "invalid_type", "ring_seconds"),
    ("pbx/ring-groups/600", {**RING, "ring_seconds": True}, "invalid_type", "ring_seconds"),
    ("pbx/ring-groups/600", {**RING, "ring_seconds": 301}, "invalid_field", "ring_seconds"),
    ("pbx/ring-groups/600", {**RING, "members": []}, "invalid_field", "members"),
    ("pbx/ring-groups/600", {**RING, "members": ["100"] * 51}, "too_long", "members"),
    ("pbx/ring-groups/600", {**RING, "members": ["100", "123456"]}, "too_long", "members[1]"),
    ("pbx/extensions/102", {"name": "x" * 101, "site_block": "ber-main"}, "too_long", "name"),
    ("pbx/extensions/102", {"name": "", "site_block": "ber-main"}, "invalid_field", "name"),
    ("pbx/extensions/102", {"name": "x"}, "missing_field", "site_block"),
    ("pbx/extensions/102", {"name": "x", "site_block": "ber-main", "ext": "1"}, "unknown_field",
     "ext"),
    ("blocks/ber-main", {**BERLIN, "trunk": {**TRUNK, "x": 1}}, "unknown_field", "trunk.x"),
    ("blocks/ber-main", {**BERLIN, "trunk": {"username": "u"}}, "missing_field",
     "trunk.password"),
    ("blocks/ber-main", {**BERLIN, "trunk": {**TRUNK, "password": "short"}}, "invalid_trunk",
     "trunk.password"),
    ("blocks/ber-main", {**BERLIN, "trunk": {**TRUNK, "register": "yes"}}, "invalid_type",
     "trunk.register"),
    ("blocks/ber-main", {**BERLIN, "mode": "PBX"}, "invalid_mode", "mode"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "code", "field"), SCHEMA_RULES)
async def test_bodies_are_held_to_their_openapi_schema(
    api: Api, db: psycopg.Connection[Any], path: str, body: dict[str, Any], code: str, field: str
) -> None:
    await berlin(api)
    before = snapshot(db)
    problem = await api.problem(422, code, "PUT", f"/v1/accounts/{TARGET}/{path}", body)
    assert problem["field"] == field
    assert "123456" not in problem["detail"] and "short" not in problem["detail"]
    assert snapshot(db) == before


async def test_did_rings_one_extension_only(api: Api) -> None:
    await berlin(api)
    did = {"site_block": "ber-main", "did": "+49301234567"}
    await api.ok("PUT", f"{PBX}/extensions/101", {"name": "Ben", **did})
    await api.problem(409, "did_taken", "PUT", f"{PBX}/extensions/102", {"name": "Eve", **did})


async def test_config_before_any_apply_is_pending(api: Api) -> None:
    await berlin(api)
    config = await api.ok("GET", f"{PBX}/config")
    assert (config["apply_state"], config["revision"], config["files"]) == ("pending", None, {})


async def test_metrics_are_prometheus_text(api: Api) -> None:
    await berlin(api)
    response = await api.client.get("/metrics")
    text = await response.text()
    assert response.status == 200 and response.content_type.startswith("text/plain")
    for name in ("provisioner_apply_queue_depth 1.0", "provisioner_mails_total",
                 "provisioner_reloads_total", "provisioner_apply_seconds"):  # fmt: skip
        assert name in text, name


def console_config(folder: Any) -> Any:
    """A config file for console commands: one node (never reached), the secrets key."""
    config = folder / "c.yaml"
    config.write_text(
        "asterisk:\n  nodes:\n    - {name: default, ami_username: u, ami_secret: s,"
        f" output_dir: {folder}, carrier_host: 127.0.0.2}}\n"
        f"secrets:\n  keys: ['{SECRETS_KEY}']\n"
    )
    return config


def test_render_command_prints_the_config(db_url: str, tmp_path: Any) -> None:
    """`provisioner render` from the console, against the same database."""
    config = console_config(tmp_path)
    env = {"PROVISIONER_DATABASE_URL": db_url, "PATH": "/usr/bin:/bin"}
    seed = subprocess.run(
        [sys.executable, "-m", "provisioner", "demo", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert seed.returncode == 0, seed.stderr
    done = subprocess.run(
        [sys.executable, "-m", "provisioner", "render", "K100200", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert ";;; pjsip/tenant-k100200.conf" in done.stdout
    assert "[k100200-internal]" in done.stdout


def test_apply_command_says_so_when_another_instance_holds_the_node(
    db_url: str, db: psycopg.Connection[Any], tmp_path: Any
) -> None:
    """`provisioner apply` while another instance applies to the node: exit 1 and say
    the change is queued, not the state from before."""
    config = console_config(tmp_path)
    env = {"PROVISIONER_DATABASE_URL": db_url, "PATH": "/usr/bin:/bin"}

    def provisioner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "provisioner", *args, "--config", str(config)],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip

    assert provisioner("demo").returncode == 0
    with psycopg.connect(db_url) as other_instance:  # its round: the node's lock held
        other_instance.execute(
            "INSERT INTO service_locks VALUES ('apply:default') ON CONFLICT DO NOTHING"
        )
        other_instance.commit()
        other_instance.execute(
            "SELECT 1 FROM service_locks WHERE name = 'apply:default' FOR UPDATE"
        )
        done = provisioner("apply", "K100200", "--wait", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("not applied yet, the change stays queued"), done.stdout
    assert "another instance is applying to node default" in done.stdout


async def test_the_pbx_that_uses_a_block_chooses_where_its_unrouted_numbers_ring(
    api: Api, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    """A (no PBX of its own) can neither send B's calls nowhere nor pin B's extensions;
    B chooses among its own extensions, already while the assignment waits; the choice
    goes when the assignment ends."""
    await berlin(api)
    await api.ok("PUT", f"{PBX}/extensions/140", {"name": "Empfang", "site_block": "ber-main"})
    muc = {"number": "+4989123456", "range": "0-99", "mode": "pbx"}
    before = snapshot(db)
    for target in ("777", "140"):
        problem = await api.problem(409, "no_pbx", "PUT", f"/v1/accounts/{OWNER}/blocks/{BLOCK}",
                                    {**muc, "default_target": target})  # fmt: skip
        assert problem["field"] == "default_target"
    # B cannot choose for a block that is not (yet) B's to use.
    await api.problem(404, "block_not_found", "PUT", f"{PBX}/blocks/{BLOCK}",
                      {"default_target": "140"})  # fmt: skip
    assert snapshot(db) == before

    assignment, owner_link, target_link = await request_assignment(api, inbox)
    await api.problem(422, "unknown_target", "PUT", f"{PBX}/blocks/{BLOCK}",
                      {"default_target": "777"})  # fmt: skip
    await api.problem(422, "reserved_extension", "PUT", f"{PBX}/blocks/{BLOCK}",
                      {"default_target": "110"})  # fmt: skip
    await api.problem(422, "invalid_extension", "PUT", f"{PBX}/blocks/{BLOCK}",
                      {"default_target": "0140"})  # fmt: skip
    chosen = await api.ok("PUT", f"{PBX}/blocks/{BLOCK}", {"default_target": "140"})
    assert chosen == {"block_id": BLOCK, "default_target": "140"}
    # C, no party, learns nothing of the block.
    await api.problem(404, "block_not_found", "PUT", f"/v1/accounts/{OTHER}/pbx/blocks/{BLOCK}",
                      {"default_target": None})  # fmt: skip
    assert (await api.client.post(path_of(owner_link))).status == 200
    assert (await api.client.post(path_of(target_link))).status == 200
    assert await default_targets(db) == {"ber-main": "100", BLOCK: "140"}
    await api.problem(409, "extension_in_use", "DELETE", f"{PBX}/extensions/140")

    await api.ok("DELETE", f"/v1/blocks/{BLOCK}/assignment", headers={"X-Acting-Customer": OWNER})
    assert db.execute(
        "SELECT count(*) FROM default_targets WHERE block_id = %s", (BLOCK,)
    ).fetchone() == (0,)
    deleted = await api.call("DELETE", f"{PBX}/extensions/140")
    assert deleted.status == 204
    assert assignment["state"] == "pending"


async def test_the_owners_own_pbx_chooses_among_its_own_extensions(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    await scene(api)
    await api.ok("PUT", f"/v1/accounts/{TARGET}/blocks/ber-main", BERLIN)
    await api.problem(422, "unknown_target", "PUT", f"/v1/accounts/{TARGET}/blocks/ber-main",
                      {**BERLIN, "default_target": "100"})  # fmt: skip
    await api.ok("PUT", f"{PBX}/extensions/100", {"name": "Anna", "site_block": "ber-main"})
    block = {**BERLIN, "default_target": "100"}
    await api.ok("PUT", f"/v1/accounts/{TARGET}/blocks/ber-main", block)
    assert await default_targets(db) == {"ber-main": "100"}
    await api.ok("PUT", f"{PBX}/blocks/ber-main", {"default_target": None})
    assert await default_targets(db) == {"ber-main": None}


async def default_targets(db: psycopg.Connection[Any]) -> dict[str, str | None]:
    """Where B's PBX view (what the templates render) rings each block's unrouted numbers."""
    async with await psycopg.AsyncConnection.connect(db.info.dsn) as conn:
        pbx = await db_accounts.get_pbx(conn, TARGET)
        assert pbx is not None
        view = await load_view(conn, pbx, None)
    return {t.block_id: t.default_target for t in view.trunks}
