"""Promises to operators and the portal: OpenAPI matches the routes, every setting is
documented, migrations apply to an empty database, the commands answer --help."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import yaml
from fixtures_mail import Inbox
from fixtures_service import Api
from helpers import BLOCK, OWNER, TARGET, request_assignment, scene

from provisioner import cli
from provisioner.api.system import openapi_document
from provisioner.app import create_app
from provisioner.db.migrate import migrate, migrations
from provisioner.domain import events as domain_events
from provisioner.settings import SettingsError
from provisioner.settings.docs import key_table
from provisioner.settings.load import declared_keys
from provisioner.settings.load import load as load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_openapi_lists_exactly_the_real_routes() -> None:
    app = create_app(load_settings(env={}), run_workers=False)
    real = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        real.add((route.method.lower(), path))
    documented = {
        (method, path)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }
    assert real == documented


async def test_served_openapi_is_the_committed_file(api: Api) -> None:
    """What GET /openapi.json serves, compared with the file in the repository."""
    committed = yaml.safe_load((ROOT / "provisioner/api/openapi.yaml").read_text())
    served = await api.ok("GET", "/openapi.json", key="")
    assert served == committed
    assert served["openapi"].startswith("3.1")


async def test_responses_match_the_documented_schemas(api: Api, inbox: Inbox) -> None:
    document = await api.ok("GET", "/openapi.json", key="")
    schemas = document["components"]["schemas"]

    def check(instance: Any, name: str) -> None:
        # The components travel along so that $refs inside a schema resolve.
        jsonschema.validate(instance, {**schemas[name], "components": document["components"]})

    await scene(api)
    check(await api.ok("GET", f"/v1/accounts/{OWNER}"), "Account")
    check(await api.ok("GET", f"/v1/accounts/{TARGET}/pbx"), "Pbx")
    for block in (await api.ok("GET", f"/v1/accounts/{OWNER}/blocks"))["blocks"]:
        check(block, "Block")
    assignment, _, _ = await request_assignment(api, inbox)
    check(assignment, "Assignment")
    check(await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment"), "Assignment")
    for event in (await api.ok("GET", f"/v1/assignments/{assignment['id']}/events"))["events"]:
        check(event, "Event")
    problem = await api.problem(404, "block_not_found", "GET", "/v1/blocks/x/assignment")
    check(problem, "Problem")


def test_every_setting_is_documented_in_the_readme() -> None:
    """The README's table is the one made from the declaration of the keys (name, env
    var, default and text): a key changed in the declaration and not in the README fails."""
    readme = (ROOT / "README.md").read_text()
    assert key_table() in readme
    for key in declared_keys():
        assert f"`{key.env_var}`" in readme, f"README does not name {key.env_var}"


def test_env_vars_override_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("listen:\n  port: 9000\nassignment:\n  confirm_within_days: 3\n")
    loaded = load_settings(
        config, env={"PROVISIONER_LISTEN_PORT": "9100", "PROVISIONER_SMTP_HOST": "mx.example"}
    )
    assert (loaded.listen.port, loaded.assignment.confirm_within_days) == (9100, 3)
    assert loaded.smtp.host == "mx.example"


def test_unknown_and_bad_settings_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("listen:\n  prot: 9000\n")
    with pytest.raises(SettingsError, match=r"listen\.prot"):
        load_settings(config, env={})
    with pytest.raises(SettingsError, match="PROVISIONER_LISTEN_PORT"):
        load_settings(env={"PROVISIONER_LISTEN_PORT": "eighty"})
    bad_key = "api_keys:\n  - {name: x, role: admin, key_sha256: abc}\n"
    config.write_text(bad_key)
    with pytest.raises(SettingsError, match="role"):
        load_settings(config, env={})


def test_secrets_stay_out_of_reprs() -> None:
    loaded = load_settings(
        env={"PROVISIONER_DATABASE_URL": "postgresql://u:hunter2@db/x",
             "PROVISIONER_SMTP_PASSWORD": "hunter2"}
    )  # fmt: skip
    assert "hunter2" not in repr(loaded)


async def test_migrations_apply_to_an_empty_database_and_again_do_nothing(pg_url: str) -> None:
    name = "prov_migration_test"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    info = psycopg.conninfo.conninfo_to_dict(pg_url)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo("", **info)
    try:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            applied = await migrate(conn)
            assert applied == [m[1] for m in migrations()]
            assert await migrate(conn) == []
            cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY 1")
            assert [r[0] for r in await cur.fetchall()] == [m[0] for m in migrations()]
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_migration_files_are_numbered_without_gaps() -> None:
    versions = [m[0] for m in migrations()]
    assert versions == list(range(1, len(versions) + 1))
    for _, name, _ in migrations():
        assert re.match(r"^\d{4}_[a-z0-9_]+\.sql$", name)


def commands() -> list[str]:
    """Every subcommand the console's parser has (a new one is tested without a word)."""
    (action,) = [a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(action.choices)


def test_the_console_has_the_commands_the_readme_names() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in commands():
        assert f"provisioner {command}" in readme or f"`{command}`" in readme, command


@pytest.mark.parametrize("command", commands())
def test_every_command_answers_help(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "provisioner", command, "--help"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_unknown_keys_inside_entries_are_refused(tmp_path: Path) -> None:
    """A typo inside a node or API-key entry is an error, not a silent default."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "asterisk:\n  nodes:\n    - {name: n1, ami_username: u, ami_secret: s,"
        " output_dir: /tmp, carrier_host: 127.0.0.2, carier_port: 5070}\n"
    )
    with pytest.raises(SettingsError, match="carier_port"):
        load_settings(config, env={})
    config.write_text(
        "api_keys:\n  - {name: k, role: portal, key_sha256: " + "0" * 64 + ", rol: engineer}\n"
    )
    with pytest.raises(SettingsError, match="rol"):
        load_settings(config, env={})


def test_settings_tree_refuses_typos_and_wrong_types_at_every_level(tmp_path: Path) -> None:
    """Each level of the declared tree: a section, a list entry, an env var's list."""
    node = "{name: n1, ami_username: u, ami_secret: s, output_dir: /tmp, carrier_host: h}"
    refused = {
        "smtp:\n  tiemout_seconds: 5\n": r"smtp\.tiemout_seconds",
        "webhooks:\n  - {url: 'http://x', secret: whsec_MTIzNDU2Nzg5MDEyMzQ1Ng==, event: [a]}\n":
            r"webhooks\[0\]\.event",
        "asterisk:\n  nodes:\n    - {name: n1, ami_username: u}\n": r"ami_secret is required",
        "asterisk:\n  nodes:\n    - " + node[:-1] + ", ami_port: yes}\n":
            r"asterisk\.nodes\[0\]\.ami_port: expected a whole number",
        "smtp:\n  starttls: maybe\n": r"smtp\.starttls: expected true or false",
        "listen: 8080\n": r"listen: expected a mapping",
    }  # fmt: skip
    config = tmp_path / "c.yaml"
    for text, message in refused.items():
        config.write_text(text)
        with pytest.raises(SettingsError, match=message):
            load_settings(config, env={})
    nodes = "[" + node.replace("s,", "hunter2,")[:-1] + ", file_group: 0}]"
    loaded = load_settings(
        env={"PROVISIONER_ASTERISK_NODES": nodes, "PROVISIONER_SMTP_STARTTLS": "yes"}
    )
    (entry,) = loaded.asterisk.nodes
    assert (entry.ami_port, entry.carrier_port, entry.file_group) == (5038, 5060, 0)
    assert entry.ami_secret.value == "hunter2" and "hunter2" not in repr(loaded)
    assert loaded.smtp.starttls is True
    with pytest.raises(SettingsError, match="PROVISIONER_ASTERISK_NODES"):
        load_settings(env={"PROVISIONER_ASTERISK_NODES": "[{name: n1, carier_port: 1}]"})
    with pytest.raises(SettingsError, match="PROVISIONER_API_KEYS"):
        load_settings(env={"PROVISIONER_API_KEYS": "[{name: "})


def check_constraints(db: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(table, definition) of every CHECK constraint, as PostgreSQL prints it."""
    return db.execute(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contype = 'c'"
    ).fetchall()


def sql_patterns(db: psycopg.Connection[Any]) -> dict[tuple[str, str], str]:
    """(table, column) -> the regular expression of its CHECK constraint."""
    found = {}
    for table, definition in check_constraints(db):
        match = re.match(r"^CHECK \(\((\w+) ~ '(.+)'::text\)\)$", definition)
        if match:
            found[(table, match.group(1))] = match.group(2)
    return found


def sql_checks(db: psycopg.Connection[Any]) -> dict[tuple[str, str], str]:
    """(table, column) -> an enumeration's choices as an array text ("{de,en}"), or a
    range as "length(name) 1 200" / "ring_seconds 5 300"."""
    found = {}
    for table, definition in check_constraints(db):
        choices = re.match(r"^CHECK \(\((\w+) = ANY \(ARRAY\[(.+)\]\)\)\)$", definition)
        if choices:
            values = re.findall(r"'([^']*)'::text", choices.group(2))
            found[(table, choices.group(1))] = "{" + ",".join(values) + "}"
        bounds = re.match(r"^CHECK \(\(\(?(length\((\w+)\)|(\w+))\)? >= (\d+)\) AND \(\(?"
                          r"(?:length\(\w+\)|\w+)\)? <= (\d+)\)\)\)$", definition)  # fmt: skip
        if bounds:
            column = bounds.group(2) or bounds.group(3)
            found[(table, column)] = f"{bounds.group(1)} {bounds.group(4)} {bounds.group(5)}"
    return found


def test_each_identifier_rule_is_declared_once(db: psycopg.Connection[Any]) -> None:
    """The OpenAPI document and the database say what domain/rules.py says."""
    from provisioner.domain import rules

    document = openapi_document()
    parameters = document["components"]["parameters"]
    schemas = document["components"]["schemas"]
    assert parameters["customer"]["schema"]["pattern"] == rules.CUSTOMER.pattern
    assert parameters["block_id"]["schema"]["pattern"] == rules.BLOCK_ID.pattern
    assert parameters["ActingCustomer"]["schema"]["pattern"] == rules.CUSTOMER.pattern
    assert schemas["PbxInput"]["properties"]["node"]["pattern"] == rules.NAME.pattern
    block = schemas["BlockInput"]["properties"]
    assert block["default_target"]["pattern"] == rules.EXTENSION.pattern
    trunk = block["trunk"]["properties"]["username"]
    assert trunk["pattern"] == rules.TRUNK_USER.pattern
    pickup = schemas["ExtensionInput"]["properties"]["pickup_group"]
    assert pickup["pattern"] == rules.NAME.pattern
    for path, item in document["paths"].items():
        for parameter in item.get("parameters", []):
            if parameter.get("name") == "ext":
                assert parameter["schema"]["pattern"] == rules.EXTENSION.pattern, path
            if parameter.get("name") == "node":
                assert parameter["schema"]["pattern"] == rules.NAME.pattern, path
    sql = sql_patterns(db)
    assert sql[("accounts", "customer")] == rules.CUSTOMER.pattern
    for column in (("extensions", "ext"), ("ring_groups", "ext"), ("default_targets", "target")):
        assert sql[column] == rules.EXTENSION.pattern, column
    assert sql[("extensions", "pickup_group")] == rules.NAME.pattern
    assert sql[("blocks", "trunk_username")] == rules.TRUNK_USER.pattern
    # Enumerations: rules.py, the request and response schemas, and the CHECKs.
    enums = {
        rules.LANGUAGES: [("AccountInput", "language"), ("Account", "language")],
        rules.MODES: [("BlockInput", "mode"), ("ModeInput", "mode"), ("Block", "mode")],
        rules.STRATEGIES: [("RingGroupInput", "strategy")],
    }
    for choices, places in enums.items():
        for schema, prop in places:
            assert tuple(schemas[schema]["properties"][prop]["enum"]) == choices, schema
    checks = sql_checks(db)
    assert checks[("accounts", "language")] == f"{{{','.join(rules.LANGUAGES)}}}"
    assert checks[("blocks", "mode")] == f"{{{','.join(rules.MODES)}}}"
    assert checks[("ring_groups", "strategy")] == f"{{{','.join(rules.STRATEGIES)}}}"
    # Lengths and ranges: the request schema and the CHECK say the same.
    bounds = {
        ("AccountInput", "name"): ("accounts", "length(name)"),
        ("ExtensionInput", "name"): ("extensions", "length(name)"),
        ("RingGroupInput", "name"): ("ring_groups", "length(name)"),
        ("RingGroupInput", "ring_seconds"): ("ring_groups", "ring_seconds"),
    }
    for (schema, prop), (table, expression) in bounds.items():
        spec = schemas[schema]["properties"][prop]
        text = spec["type"] == "string"
        low, high = (
            (spec["minLength"], spec["maxLength"]) if text else (spec["minimum"], spec["maximum"])
        )
        assert checks[(table, prop)] == f"{expression} {low} {high}", (schema, prop)
    # Wider on purpose: rows written when block ids could have 64 characters.
    assert sql[("blocks", "id")] == "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
    assert (
        rules.BLOCK_ID.pattern.replace(str(rules.BLOCK_ID_MAX - 1), "63") == sql[("blocks", "id")]
    )


def test_event_types_are_the_ones_declared_with_their_payloads() -> None:
    """domain/events.py is the one declaration of the feed's types and payloads: the
    document's FeedEvent enumerates exactly those types, each payload schema has exactly
    the dataclass's fields (all required), and the README names every type."""
    schemas = openapi_document()["components"]["schemas"]
    assert schemas["FeedEvent"]["properties"]["type"]["enum"] == list(domain_events.TYPES)
    refs = [
        r["$ref"].rsplit("/", 1)[1] for r in schemas["FeedEvent"]["properties"]["data"]["oneOf"]
    ]
    payloads = {cls.__name__: cls for cls in domain_events.TYPES.values()}
    assert sorted(refs) == sorted(payloads)
    for name, cls in payloads.items():
        fields = [f.name for f in dataclasses.fields(cls)]
        assert list(schemas[name]["properties"]) == fields, name
        assert schemas[name]["required"] == fields, name
    readme = (ROOT / "README.md").read_text()
    for type_ in domain_events.TYPES:
        short = "." + type_.split(".", 1)[1]
        assert f"`{type_}`" in readme or f"`{short}`" in readme, type_
    with pytest.raises(TypeError):
        domain_events.data_of("assignment.renamed", _change())
    with pytest.raises(TypeError):
        domain_events.data_of("apply.applied", _change())


def _change() -> domain_events.AssignmentChange:
    return domain_events.AssignmentChange(
        assignment_id="a", block_id="b", owner="o", target="t", state="active", old_state=None
    )
