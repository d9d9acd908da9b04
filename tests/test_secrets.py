"""SIP secrets: shown once, then never again by any route, role, log line or stored row.

The scene has both kinds: phones (whose password the creating response shows once and
whose hash the files carry) and block trunks (whose password the portal writes and only
Asterisk's file carries, sealed in the database). After it is applied in the lab, every
GET route of the OpenAPI document is called with every role and acting customer, and
nothing anyone can read holds any of them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from fixtures_db import snapshot
from fixtures_lab import Lab
from fixtures_mail import Inbox
from fixtures_service import ENGINEER_KEY, PORTAL_KEY, SECRETS_KEY, Api
from helpers import BLOCK, OTHER, OWNER, TARGET, path_of, request_assignment, scene
from lab_helpers import branch_scene, cologne_pbx, lab_service, wait_applied

from provisioner.domain.credentials import SecretBox, sip_ha1
from provisioner.settings import Secrets, Settings

TRUNK_PASSWORDS = ("Berlin-trunk-1", "Munich-trunk-1")
OPENAPI = Path(__file__).resolve().parent.parent / "provisioner" / "api" / "openapi.yaml"


def secret_corpus(db: psycopg.Connection[Any], phone_passwords: list[str]) -> set[str]:
    """Everything that would let someone register as a phone or call as a trunk: the
    passwords, the phones' digest hashes, and the sealed trunk passwords."""
    corpus = {*TRUNK_PASSWORDS, *phone_passwords}
    corpus |= {row[0] for row in db.execute("SELECT sip_ha1 FROM extensions")}
    corpus |= {row[0] for row in db.execute("SELECT trunk_sealed FROM blocks") if row[0]}
    return corpus


def get_paths(assignment_id: str) -> list[str]:
    """Every GET route of the OpenAPI document, its parameters filled from the scene."""
    document = yaml.safe_load(OPENAPI.read_text())
    values = {
        "customer": (TARGET, OWNER, OTHER),
        "block_id": (BLOCK, "ber-main", "cgn-main"),
        "assignment_id": (assignment_id,),
        "ext": ("100", "200"),
        "token": ("not-a-token",),
        "node": ("default",),
    }
    paths = []
    for template, operations in document["paths"].items():
        if "get" not in operations:
            continue
        expanded = [template]
        for name, options in values.items():
            if "{" + name + "}" in template:
                expanded = [p.replace("{" + name + "}", v) for p in expanded for v in options]
        assert all("{" not in p for p in expanded), f"no value for a parameter of {template}"
        paths.extend(expanded)
    for path in list(paths):
        if path.endswith("/config/diff"):
            paths += [f"{path}?from=1", f"{path}?from=1&to=2", f"{path}?from=2&to=3"]
    return paths


def leaks(text: str, corpus: set[str]) -> list[str]:
    return sorted(s for s in corpus if s in text)


async def test_no_route_role_log_or_stored_row_shows_a_sip_secret(
    settings: Settings,
    lab: Lab,
    clean_lab: Lab,
    inbox: Inbox,
    db: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with lab_service(settings, clean_lab) as (api, _node):
        anna = await branch_scene(api)
        emil = await cologne_pbx(api)
        assignment, owner_link, target_link = await request_assignment(api, inbox)
        await api.client.post(path_of(owner_link))
        await api.client.post(path_of(target_link))
        carla = await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/200", {
            "name": "Carla München", "site_block": BLOCK, "did": "+49891234560",
        })  # fmt: skip
        await wait_applied(api, TARGET)
        await wait_applied(api, OTHER)
        passwords = [p["sip_password"] for p in (anna, emil, carla)]
        corpus = secret_corpus(db, passwords)
        assert len(corpus) == 2 + 3 + 3 + 2

        # The disk has what Asterisk needs (and only there): A's trunk password in B's file.
        pjsip = (clean_lab.output_dir / "pjsip/tenant-k100200.conf").read_text()
        assert "password = Munich-trunk-1" in pjsip and "md5_cred = " in pjsip
        assert not any(p in pjsip for p in passwords)  # phones: only their hashes

        callers: list[tuple[str, dict[str, str]]] = [
            ("no key", {}),
            ("engineer", {"Authorization": f"Bearer {ENGINEER_KEY}"}),
            ("portal", {"Authorization": f"Bearer {PORTAL_KEY}"}),
        ]
        callers += [
            (f"portal as {c}", {"Authorization": f"Bearer {PORTAL_KEY}", "X-Acting-Customer": c})
            for c in (TARGET, OWNER, OTHER)
        ]
        paths = [
            *get_paths(assignment["id"]),
            "/metrics",
            "/openapi.json",
            path_of(owner_link),
        ]
        seen = 0
        for who, headers in callers:
            for path in paths:
                response = await api.client.get(path, headers=headers)
                text = await response.text()
                assert response.status < 500, f"{who} GET {path}: {response.status} {text}"
                assert not leaks(text, corpus), f"{who} GET {path} shows {leaks(text, corpus)}"
                seen += response.status == 200
        assert seen > 50  # the sweep read real content, not only refusals

        # B, as itself, reads its config (with A's trunk) but never A's credentials.
        shown = await api.ok(
            "GET", f"/v1/accounts/{TARGET}/pbx/config", headers={"X-Acting-Customer": TARGET}
        )
        trunk = shown["files"]["pjsip/tenant-k100200.conf"]
        assert "[k100200-trunk-muc-main]" in trunk and "password = <secret>" in trunk

    # Nothing stored in plain text: every row of every table we own.
    for table, rows in snapshot(db).items():
        assert not leaks(repr(rows), set(TRUNK_PASSWORDS) | set(passwords)), table
    revisions = repr(db.execute("SELECT * FROM config_revisions").fetchall())
    assert not leaks(revisions, corpus)
    # And no log line of the whole run (API, mails, applier).
    logged = "\n".join(caplog.text.splitlines())
    assert not leaks(logged, corpus), leaks(logged, corpus)


async def test_generated_files_are_readable_by_asterisk_only(
    settings: Settings, clean_lab: Lab, inbox: Inbox
) -> None:
    async with lab_service(settings, clean_lab) as (api, _node):
        await branch_scene(api)
        await wait_applied(api, TARGET)
    written = [p for p in clean_lab.output_dir.rglob("*.conf") if not p.name.startswith("00-")]
    assert len(written) >= 4  # the PBX's two files, the node's two
    for path in written:
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) & 0o007 == 0, f"{path} is world-readable"
        assert info.st_gid == clean_lab.file_group, path
    kept = list((clean_lab.output_dir / ".good").rglob("*.conf"))
    assert kept and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    # And Asterisk, as its own user, did read them: the phone is there.
    assert "k100200-100" in clean_lab.cli("pjsip show endpoints")


async def test_phone_authenticates_with_its_password_against_the_stored_hash(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    """The database holds HA1 for the realm the phone was made in, not the password."""
    await scene(api)
    await api.ok("PUT", f"/v1/accounts/{TARGET}/blocks/ber-main",
                 {"number": "+4930123456", "range": "0-99", "mode": "pbx"})  # fmt: skip
    phone = await api.ok(
        "PUT", f"/v1/accounts/{TARGET}/pbx/extensions/100",
        {"name": "Anna", "site_block": "ber-main"},
    )  # fmt: skip
    realm, ha1 = db.execute("SELECT sip_realm, sip_ha1 FROM extensions").fetchone() or ("", "")
    assert (realm, ha1) == ("provisioner", sip_ha1("k100200-100", realm, phone["sip_password"]))
    assert phone["sip_password"] not in repr(snapshot(db))


async def test_trunk_credentials_need_a_secrets_key(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    from dataclasses import replace

    from aiohttp.test_utils import TestClient, TestServer

    from provisioner.app import create_app

    app = create_app(replace(settings, secrets=Secrets()))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        api = Api(client)
        await scene(api)
        before = snapshot(db)
        problem = await api.problem(
            422, "secrets_key_missing", "PUT", f"/v1/accounts/{TARGET}/blocks/ber-main",
            {"number": "+4930123456", "range": "0-99", "mode": "pbx",
             "trunk": {"username": "k100200-ber", "password": "Berlin-trunk-1"}},
        )  # fmt: skip
        assert "secrets.keys" in problem["detail"] and "Berlin-trunk-1" not in str(problem)
        assert snapshot(db) == before

        # Phones need no key; but with none, a stored response cannot keep the password:
        # a retry answers without it, and the record holds it nowhere.
        await api.ok("PUT", f"/v1/accounts/{TARGET}/blocks/ber-main",
                     {"number": "+4930123456", "range": "0-99", "mode": "pbx"})  # fmt: skip
        key = {"Idempotency-Key": "phone-100"}
        body = {"name": "Anna", "site_block": "ber-main"}
        path = f"/v1/accounts/{TARGET}/pbx/extensions/100"
        first = await api.ok("PUT", path, body, headers=key)
        again = await api.call("PUT", path, body, headers=key)
        assert again.headers["Idempotent-Replayed"] == "true" and again.status == 201
        assert "sip_password" in first and "sip_password" not in await again.json()
        stored = db.execute("SELECT body, sealed FROM idempotency_keys").fetchall()
        assert len(stored) == 1 and not stored[0][1]
        assert first["sip_password"] not in repr(stored)
    finally:
        await client.close()


async def test_the_service_seals_trunk_passwords_stored_before_sealing_at_start(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    """A row from before migration 0003 (plain trunk_password) is sealed when the
    service starts with a key; the plain column is emptied."""
    from aiohttp.test_utils import TestClient, TestServer

    from provisioner.app import create_app

    db.execute("INSERT INTO accounts VALUES ('K1', 'Alt', 'a@b.example', 'de', now(), now())")
    db.execute(
        "INSERT INTO blocks (id, owner, base_number, range_first, range_last, country_code,"
        " area_code, mode, created_at, updated_at, trunk_username, trunk_password)"
        " VALUES ('b1', 'K1', '+4930123456', '0', '9', 49, '30', 'pbx', now(), now(),"
        " 'k1-user', 'Old-trunk-pass')"
    )
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    await client.close()
    row = db.execute("SELECT trunk_password, trunk_sealed FROM blocks").fetchone()
    assert row is not None
    plain, sealed = row
    assert plain is None and sealed is not None
    assert settings.secret_box().open(sealed) == "Old-trunk-pass"


async def test_an_idempotent_retry_gets_the_password_sealed_in_storage(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    await scene(api)
    await api.ok("PUT", f"/v1/accounts/{TARGET}/blocks/ber-main",
                 {"number": "+4930123456", "range": "0-99", "mode": "pbx"})  # fmt: skip
    body = {"name": "Anna", "site_block": "ber-main"}
    key = {"Idempotency-Key": "phone-100", "X-Acting-Customer": TARGET}
    first = await api.call("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/100", body, headers=key)
    again = await api.call("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/100", body, headers=key)
    password = (await first.json())["sip_password"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["sip_password"] == password
    stored = db.execute("SELECT body, sealed FROM idempotency_keys").fetchall()
    assert stored and all(row[1] for row in stored)
    assert password not in repr(stored)
    # The same key sent for another customer is another request, checked on its own.
    await api.problem(
        403, "acting_customer_forbidden", "PUT", f"/v1/accounts/{TARGET}/pbx/extensions/100",
        body, headers={**key, "X-Acting-Customer": OTHER},
    )  # fmt: skip


def test_rotate_secrets_reseals_every_trunk_under_the_new_key(
    db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A new key first, `provisioner rotate-secrets`, then the old key can go."""
    new_key = SecretBox.new_key()

    def provisioner(*args: str, keys: list[str]) -> subprocess.CompletedProcess[str]:
        env = {
            "PROVISIONER_DATABASE_URL": db_url,
            "PROVISIONER_SECRETS_KEYS": json.dumps(keys),
            "PATH": os.environ["PATH"],
        }
        return subprocess.run(
            [sys.executable, "-m", "provisioner", *args],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip

    seeded = provisioner("demo", keys=[SECRETS_KEY])
    assert seeded.returncode == 0, seeded.stderr
    # A trunk written before sealing existed is sealed too.
    db.execute("UPDATE blocks SET trunk_sealed = NULL, trunk_password = 'Legacy-pass-1'"
               " WHERE id = 'ber-main'")  # fmt: skip
    rotated = provisioner("rotate-secrets", keys=[new_key, SECRETS_KEY])
    assert rotated.returncode == 0, rotated.stderr
    assert "sealed 3 trunk password(s)" in rotated.stdout, rotated.stdout
    rows = dict(db.execute("SELECT id, trunk_sealed FROM blocks ORDER BY id").fetchall())
    only_new = SecretBox([new_key])
    assert only_new.open(rows["ber-main"]) == "Legacy-pass-1"
    assert only_new.open(rows["muc-main"]) == "Munich-trunk-1"
    assert re.fullmatch(r"[A-Za-z0-9_=-]+", rows["muc-main"])
    assert db.execute(
        "SELECT count(*) FROM blocks WHERE trunk_password IS NOT NULL"
    ).fetchone() == (0,)


async def test_migration_hashes_phone_passwords_and_redacts_stored_revisions(
    pg_url: str,
) -> None:
    """A database written before secrets were kept at rest: after migration 0003 the
    phones keep working (HA1 of their old password), no stored row holds a secret, and
    every PBX is queued to be written again."""
    import uuid

    from provisioner.db.migrate import migrate, migrations

    name = f"prov_legacy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(pg_url)
    url = psycopg.conninfo.make_conninfo("", **{**info, "dbname": name})
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, file_name, sql in migrations():
                if version < 3:
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)",
                                 (version, file_name))  # fmt: skip
            conn.execute(
                "INSERT INTO accounts VALUES ('K1', 'Alt GmbH', 'a@b.example', 'de', now(), now());"
                "INSERT INTO pbxes (customer, slug, created_at) VALUES ('K1', 'k1', now());"
                "INSERT INTO blocks VALUES ('b1', 'K1', '+4930123456', '0', '9', 49, '30', 'pbx',"
                " now(), now(), 'k1-user', 'Old-trunk-pass', '10');"
                "INSERT INTO extensions VALUES ((SELECT id FROM pbxes), '10', 'Anna', 'b1', NULL,"
                " NULL, 'old-phone-password-1234', now(), now());"
                "INSERT INTO config_revisions VALUES ((SELECT id FROM pbxes), 1, 'x',"
                ' \'{"pjsip/tenant-k1.conf": "[k1-10]\\ntype = auth\\npassword = old-phone-'
                "password-1234\\n\\n[k1-trunk-b1]\\npassword = Old-trunk-pass\\n\"}', now());"
                "INSERT INTO idempotency_keys (client, key, request_hash, created_at, status,"
                " content_type, body) VALUES ('portal', 'k', '\\x00', now(), 201,"
                " 'application/json', convert_to('{\"sip_password\": \"old-phone-password-1234\"}',"
                " 'UTF8'))"
            )
        async with await psycopg.AsyncConnection.connect(url) as aconn:
            assert await migrate(aconn) == [n for v, n, _ in migrations() if v >= 3]
        with psycopg.connect(url, autocommit=True) as conn:
            realm, ha1 = conn.execute("SELECT sip_realm, sip_ha1 FROM extensions").fetchone() or ()
            assert ha1 == sip_ha1("k1-10", realm, "old-phone-password-1234")
            files, digest = conn.execute(
                "SELECT files, sha256 FROM config_revisions"
            ).fetchone() or ({}, "")
            text = files["pjsip/tenant-k1.conf"]
            assert text.count("password = <secret>") == 2, text
            from provisioner.render.render import digest as render_digest

            assert digest == render_digest(files)
            assert conn.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (0,)
            assert conn.execute("SELECT reason FROM apply_queue").fetchall() == [
                ("phones authenticate by digest hash",)
            ]
            everything = repr([conn.execute(f"SELECT * FROM {t}").fetchall() for t in (
                "extensions", "config_revisions", "idempotency_keys")])  # fmt: skip
            assert "old-phone-password-1234" not in everything
            # The trunk password waits in plain text for the service's key (sealed at start).
            assert conn.execute("SELECT trunk_password FROM blocks").fetchone() == (
                "Old-trunk-pass",
            )
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
