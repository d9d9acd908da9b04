"""The rows a realtime node's Asterisk reads, without Asterisk: read from the rendered
pjsip file, in the views' shape, written as changes, and readable per node only."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from pbx_rows import CARRIER, PASSWORDS, two_site_pbx

from provisioner.asterisk import realtime
from provisioner.db import pjsip_rows
from provisioner.render.render import pbx_files
from provisioner.render.view import build

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def a_pbx(db: psycopg.Connection[Any]) -> int:
    db.execute("INSERT INTO accounts (customer, name, email, language, created_at, updated_at)"
               " VALUES ('K100200', 'x', 'x@y.example', 'de', now(), now())")  # fmt: skip
    row = db.execute(
        "INSERT INTO pbxes (customer, slug, node, created_at)"
        " VALUES ('K100200', 'k100200', 'default', now()) RETURNING id"
    ).fetchone()
    assert row is not None
    return int(row[0])


def rendered(register: bool = True, name: str = "Anna Berlin") -> dict[str, str]:
    pbx, used, extensions, groups = two_site_pbx()
    used = [replace(used[0], trunk_register=register), used[1]]
    extensions = [replace(extensions[0], name=name), *extensions[1:]]
    view = build(pbx, "Spree Logistik GmbH", used, extensions, groups, PASSWORDS)
    return pbx_files(view, CARRIER)


def test_every_option_the_template_writes_has_a_column_and_registrations_stay() -> None:
    config = rendered()
    objects = realtime.objects(config)  # refuses an option without a column
    assert ("endpoint", "k100200-100") in objects
    assert ("auth", "k100200-trunk-ber-main") in objects
    assert {kind for kind, _ in objects} == {"endpoint", "aor", "auth"}
    assert list(realtime.registrations(config)) == ["k100200-trunk-ber-main"]
    phone = objects[("endpoint", "k100200-101")]
    # set_var comes several times in the file: one column, its values joined by ';'.
    assert phone["set_var"].count(";") == 7 and phone["set_var"].startswith("OUT_NUMBER=")
    assert phone["disallow"] == "all" and phone["allow"] == "alaw,ulaw"
    trunk_auth = objects[("auth", "k100200-trunk-ber-main")]
    assert trunk_auth["password"] == PASSWORDS["ber-main"]


def test_a_value_with_separators_would_reach_asterisk_whole() -> None:
    # res_config_pgsql splits a column at ';' and decodes ^XX. The templates' filters
    # let neither into a value today (render/safe.py); the rows would carry them whole.
    assert realtime.encode("a;b^3Bc") == "a^3Bb^5E3Bc"


def test_an_option_without_a_column_is_refused() -> None:
    config = {"pjsip/tenant-x.conf": "[x-1]\ntype = endpoint\nrtp_timeout = 30\n"}
    with pytest.raises(realtime.NotRealtime, match="rtp_timeout"):
        realtime.objects(config)


def test_the_views_have_exactly_the_columns_in_their_order(db: psycopg.Connection[Any]) -> None:
    for kind, view in (("endpoint", "ps_endpoints"), ("aor", "ps_aors"), ("auth", "ps_auths")):
        columns = [
            row[0]
            for row in db.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'pjsip_realtime' AND table_name = %s"
                " ORDER BY ordinal_position",
                (view,),
            )
        ]
        assert columns == ["id", *realtime.COLUMNS[kind]], view


async def test_rows_change_only_where_the_file_changed(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    pbx_id = a_pbx(db)
    before, after = realtime.objects(rendered()), realtime.objects(rendered(name="Anna B."))
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        assert await pjsip_rows.replace(conn, "default", pbx_id, before, NOW) == set(before)
        assert await pjsip_rows.replace(conn, "default", pbx_id, before, NOW) == set()
        assert await pjsip_rows.replace(conn, "default", pbx_id, after, NOW) == {
            ("endpoint", "k100200-100")
        }
        assert await pjsip_rows.of_pbx(conn, "default", pbx_id) == after
        assert await pjsip_rows.replace(conn, "default", pbx_id, {}, NOW) == set(after)
        await conn.commit()
    assert db.execute("SELECT count(*) FROM pjsip_objects").fetchone() == (0,)


async def test_a_node_reader_sees_its_node_rows_only(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    pbx_id = a_pbx(db)
    objects = realtime.objects(rendered())
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await pjsip_rows.replace(conn, "node-1", pbx_id, objects, NOW)
        await pjsip_rows.make_reader(conn, "prov_test_reader_1", "pw-one", "node-1")
        await pjsip_rows.make_reader(conn, "prov_test_reader_2", "pw-two", "node-2")
        await conn.commit()
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    for role, password, expected in (
        ("prov_test_reader_1", "pw-one", len([k for k in objects if k[0] == "endpoint"])),
        ("prov_test_reader_2", "pw-two", 0),
    ):
        login = psycopg.conninfo.make_conninfo("", **{**info, "user": role, "password": password})
        with psycopg.connect(login) as reader:
            # Asterisk names the tables bare: the role's search path finds the views.
            count = reader.execute("SELECT count(*) FROM ps_endpoints").fetchone()
            assert count == (expected,), role
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute("SELECT * FROM public.pjsip_objects")
            reader.rollback()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute("SELECT * FROM public.pjsip_readers")


SHOWN = """
 Endpoint:  k100200-100/100                                      Unavailable   0 of inf
     InAuth:  k100200-100/k100200-100
        Aor:  k100200-100                                        1

 ParameterName                      : ParameterValue
 context                            : k100200-site-ber-main
 subscribe_context                  : k100200-internal
"""


def test_read_back_compares_what_the_cli_shows_with_the_rows() -> None:
    wanted = realtime.objects(rendered())
    assert realtime.read_back("k100200-100", wanted, SHOWN) == []
    assert realtime.read_back("k100200-100", wanted, None) == ["endpoint k100200-100 is not live"]
    assert realtime.read_back("k100200-999", wanted, SHOWN) == [
        "endpoint k100200-999 is still live"
    ]
    wrong = SHOWN.replace("k100200-site-ber-main", "k100200-site-muc-main")
    assert "context" in realtime.read_back("k100200-100", wanted, wrong)[0]
    no_auth = SHOWN.replace("InAuth:  k100200-100/k100200-100", "")
    assert realtime.read_back("k100200-100", wanted, no_auth) == [
        "endpoint k100200-100: auth k100200-100 not found"
    ]


def test_the_node_own_objects_are_rows_too_but_its_identify_stays_in_the_file() -> None:
    from provisioner.render.render import node_files

    objects = realtime.objects(node_files(CARRIER))
    assert set(objects) == {("endpoint", "carrier"), ("aor", "carrier")}
    assert objects[("endpoint", "carrier")]["context"] == "carrier-in"


def test_the_pjsip_reader_command_prints_a_login_for_that_node_once(
    db_url: str, tmp_path: Any
) -> None:
    import subprocess
    import sys

    from lab_helpers import console_env

    from provisioner.settings import Node, Secret

    node = Node(name="default", ami_username="x", ami_secret=Secret("y"), output_dir=tmp_path,
                carrier_host="127.0.0.2", pjsip="realtime")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "provisioner", "pjsip-reader", "default", "prov-cli-reader"],
        env=console_env(node, db_url), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    login = done.stdout.strip()
    with psycopg.connect(login) as reader:
        assert reader.execute("SELECT count(*) FROM ps_endpoints").fetchone() == (0,)
        assert reader.execute("SELECT current_user").fetchone() == ("prov-cli-reader",)
    unknown = subprocess.run(
        [sys.executable, "-m", "provisioner", "pjsip-reader", "elsewhere", "prov-cli-reader"],
        env=console_env(node, db_url), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unknown.returncode != 0 and "no node 'elsewhere'" in unknown.stderr


async def test_a_node_entry_without_pjsip_is_realtime_and_a_node_nobody_reads_is_said(
    db_url: str, db: psycopg.Connection[Any], tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Realtime is the default. A node entry written for a files node before, with no
    `pjsip`, is a realtime node now whose Asterisk reads nothing: the service says so at
    its start, with both ways out, until a reader role reads the node's rows."""
    from psycopg_pool import AsyncConnectionPool

    from provisioner.clock import system_clock
    from provisioner.settings import Node, Secret
    from provisioner.workers.tasks import _pjsip_mode

    node = Node(name="upgraded", ami_username="x", ami_secret=Secret("y"), output_dir=tmp_path,
                carrier_host="127.0.0.2")  # fmt: skip
    assert node.realtime
    said = "node upgraded has pjsip: realtime (the default), but no database role reads"
    try:
        async with AsyncConnectionPool(db_url, min_size=1, open=False) as pool:
            await _pjsip_mode(pool, node, system_clock)
            assert said in caplog.text and "pjsip-reader upgraded ROLE" in caplog.text
            assert "set pjsip: files in its entry" in caplog.text
            caplog.clear()
            async with pool.connection() as conn:
                await pjsip_rows.make_reader(conn, "prov-upgraded-reader", "pw", "upgraded")
            await _pjsip_mode(pool, node, system_clock)
            assert said not in caplog.text
    finally:
        db.execute("DELETE FROM pjsip_objects WHERE node = 'upgraded'")
        db.execute("DELETE FROM pjsip_readers WHERE node = 'upgraded'")
        db.execute('DROP OWNED BY "prov-upgraded-reader"')
        db.execute('DROP ROLE IF EXISTS "prov-upgraded-reader"')
