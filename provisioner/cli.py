"""The `provisioner` command: the service, its workers, and the engineers' console tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from provisioner import settings as settings_module
from provisioner.api.serving import server_options
from provisioner.app import create_app, database_url
from provisioner.apply import check
from provisioner.asterisk.ami import AsteriskUnavailable
from provisioner.clock import system_clock
from provisioner.db import pjsip_rows
from provisioner.db import router as db_router
from provisioner.db.accounts import Pbx
from provisioner.db.migrate import migrate
from provisioner.db.pool import DatabaseUnfit, open_pool
from provisioner.domain import rules
from provisioner.domain.credentials import SecretBox
from provisioner.mail.compose import Composer
from provisioner.router.rpc import RouterRefused, RouterUnavailable
from provisioner.service import blocks, console, demo
from provisioner.service import config as config_service
from provisioner.service import pbx as pbx_service
from provisioner.service import usage as usage_service
from provisioner.service.unit import Actor, Policy, Unit
from provisioner.settings import Node, Settings
from provisioner.settings.load import load as load_settings
from provisioner.workers.tasks import start_workers


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args.config)
    except settings_module.SettingsError as exc:
        raise SystemExit(f"provisioner: configuration error: {exc}") from None


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging(settings)
    if not settings.api_keys:
        logging.getLogger("provisioner").warning(
            "no api_keys configured: every /v1 request will be refused with 401"
        )
    try:
        web.run_app(
            create_app(settings),
            host=settings.listen.host,
            port=settings.listen.port,
            **server_options(settings),
        )
    except DatabaseUnfit as exc:
        raise SystemExit(f"provisioner: cannot run on this database: {exc}") from None
    return 0


async def _migrate(settings: Settings) -> list[str]:
    pool = await open_pool(await database_url(settings), max_size=1)
    try:
        async with pool.connection() as conn:
            return await migrate(conn)
    finally:
        await pool.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging(settings)
    applied = asyncio.run(_migrate(settings))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


@contextlib.asynccontextmanager
async def _pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool]:
    """A small pool on a migrated database, for one console command."""
    pool = await open_pool(await database_url(settings), max_size=3)
    try:
        async with pool.connection() as conn:
            await migrate(conn)
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _unit(pool: AsyncConnectionPool, settings: Settings, actor: str) -> AsyncIterator[Unit]:
    """One transaction, as the console's user."""
    policy = Policy.from_settings(settings)
    async with pool.connection() as conn, conn.transaction():
        yield Unit(conn, system_clock(), Actor(actor), policy, Composer())


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging(settings)
    asyncio.run(_demo(settings))
    print(demo.instructions(settings))
    return 0


async def _demo(settings: Settings) -> None:
    async with _pool(settings) as pool, _unit(pool, settings, "demo") as unit:
        await demo.seed(unit)


def _node_of(settings: Settings, pbx: Pbx) -> Node:
    node = settings.node(pbx.node)
    if node is None:
        raise SystemExit(f"provisioner: PBX {pbx.customer} is homed on node {pbx.node!r},"
                         " which asterisk.nodes does not configure")  # fmt: skip
    return node


async def _render(settings: Settings, customer: str) -> dict[str, str]:
    async with _pool(settings) as pool, _unit(pool, settings, "cli") as unit:
        pbx = await pbx_service.require_pbx(unit, customer)
        node = _node_of(settings, pbx)
        return await config_service.render(unit.conn, pbx, node, settings.secret_box())


def cmd_render(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging(settings)
    rendered = asyncio.run(_render(settings, args.customer))
    for path, text in sorted(rendered.items()):
        if args.out:
            target = Path(args.out) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(target)
        else:
            print(f";;; {path}\n{text}")
    return 0


async def _diff(settings: Settings, args: argparse.Namespace) -> str:
    async with _pool(settings) as pool, _unit(pool, settings, "cli") as unit:
        return await config_service.diff(unit, args.customer, args.start, args.end)


def cmd_diff(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging(settings)
    sys.stdout.write(asyncio.run(_diff(settings, args)))
    return 0


async def _apply(settings: Settings, customer: str, full: bool, wait: float) -> str:
    async with _pool(settings) as pool:
        async with _unit(pool, settings, "cli") as unit:
            pbx = await pbx_service.require_pbx(unit, customer)
            node = _node_of(settings, pbx)
            await console.queue_apply(unit, pbx, full=full)
        # Committed: the round below (or any instance's applier) picks the job up.
        return await console.apply_now(pool, settings, node, pbx, full=full, wait_seconds=wait)


def cmd_apply(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging(settings)
    outcome = asyncio.run(_apply(settings, args.customer, args.full, args.wait))
    print(outcome)
    return 0 if outcome.startswith("applied") else 1


async def _work(settings: Settings) -> None:
    url = await database_url(settings)
    pool = await open_pool(url, max_size=settings.database.pool_size)
    tasks = start_workers(
        settings, pool, url, system_clock, Composer(),
        Policy.from_settings(settings),
    )  # fmt: skip
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await pool.close()


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_work(settings))
    return 0


async def _check(settings: Settings, node_name: str | None, repair: bool) -> tuple[str, bool]:
    nodes = [n for n in settings.asterisk.nodes if node_name in (None, n.name)]
    if not nodes:
        raise SystemExit(f"provisioner: no node {node_name!r} in asterisk.nodes")
    lines, clean = [], True
    async with _pool(settings) as pool:
        for node in nodes:
            try:
                pbxes, node_problems = await console.check_node(pool, settings, node, repair=repair)
            except AsteriskUnavailable as exc:
                lines.append(f"{node.name:<12} {'-':<14} {'unavailable':<10} {exc}")
                clean = False
                continue
            for problem in node_problems:
                lines.append(f"{node.name:<12} {'(node)':<14} {'drift':<10} {problem}")
            for d in pbxes:
                detail = "; ".join(d.files + d.live) or "-"
                lines.append(f"{node.name:<12} {d.customer:<14} {d.status:<10} {detail}")
            clean = clean and check.node_clean(pbxes, node_problems)
        if settings.router and node_name is None:
            try:
                found = await console.check_router(pool, settings.router, repair=repair)
            except (RouterUnavailable, RouterRefused) as exc:
                found = [f"unavailable: {exc}"]
            lines += [f"{'(router)':<12} {'-':<14} {'drift':<10} {line}" for line in found]
            clean = clean and not found
    header = f"{'node':<12} {'customer':<14} {'status':<10} problems"
    return "\n".join([header, *lines]), clean


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging(settings)
    table, clean = asyncio.run(_check(settings, args.node, args.repair))
    print(table)
    return 0 if clean else 1


def cmd_new_secrets_key(args: argparse.Namespace) -> int:
    print(SecretBox.new_key())
    return 0


async def _rotate_secrets(settings: Settings) -> int:
    box = settings.secret_box()
    if not box.configured:
        raise SystemExit("provisioner: secrets.keys is empty: nothing to seal with")
    async with _pool(settings) as pool, pool.connection() as conn, conn.transaction():
        return await blocks.seal_trunk_passwords(conn, box, reseal=True)


def cmd_rotate_secrets(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging(settings)
    count = asyncio.run(_rotate_secrets(settings))
    print(f"sealed {count} trunk password(s) with the first key of secrets.keys")
    return 0


async def _reader(settings: Settings, role: str, node: str | None = None) -> str:
    """A reader role (the router's, or with `node` a realtime node's Asterisk); its
    connection string, with the new password in it."""
    password = secrets.token_urlsafe(24)
    url = await database_url(settings)
    async with _pool(settings) as pool, pool.connection() as conn, conn.transaction():
        if node is None:
            await db_router.make_reader(conn, role, password)
        else:
            await pjsip_rows.make_reader(conn, role, password, node)
    info = psycopg.conninfo.conninfo_to_dict(url)
    info.update(user=role, password=password)
    return psycopg.conninfo.make_conninfo("", **info)


def cmd_router_reader(args: argparse.Namespace) -> int:
    """Kamailio's database login; the password is shown here once and stored nowhere."""
    settings = _settings(args)
    _logging(settings)
    if not rules.NAME.fullmatch(args.role):
        raise SystemExit(f"provisioner: bad role name {args.role!r}")
    print(asyncio.run(_reader(settings, args.role)))
    return 0


def cmd_pjsip_reader(args: argparse.Namespace) -> int:
    """A realtime node's database login (its Asterisk's res_pgsql.conf); the password is
    shown here once and stored nowhere."""
    settings = _settings(args)
    _logging(settings)
    if not rules.NAME.fullmatch(args.role):
        raise SystemExit(f"provisioner: bad role name {args.role!r}")
    nodes = {n.name: n for n in settings.asterisk.nodes}
    if args.node not in nodes:
        raise SystemExit(f"provisioner: no node {args.node!r} in asterisk.nodes")
    if not nodes[args.node].realtime:
        print(f"provisioner: note: node {args.node} has pjsip: files", file=sys.stderr)
    print(asyncio.run(_reader(settings, args.role, args.node)))
    return 0


async def _import_calls(settings: Settings, node: Node, from_start: bool) -> int:
    async with _pool(settings) as pool:
        if from_start:
            await usage_service.restart_import(pool, node, system_clock())
        read = 0
        while lines := await usage_service.import_step(pool, node, settings.billing,
                                                       system_clock()):  # fmt: skip
            read += lines
        return read


def cmd_import_calls(args: argparse.Namespace) -> int:
    """Import a node's CDR spool now (the worker does it all the time); --from-start
    reads it all again, and stores only what is not stored yet."""
    settings = _settings(args)
    _logging(settings)
    node = settings.node(args.node)
    if node is None or node.cdr_file is None:
        raise SystemExit(f"provisioner: no node {args.node!r} with a cdr_file in asterisk.nodes")
    read = asyncio.run(_import_calls(settings, node, args.from_start))
    print(f"node {node.name}: {read} spool lines read")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="provisioner",
        description="Provisioning backend for cloud PBXs: number blocks shared across accounts.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help="YAML config file (default: $PROVISIONER_CONFIG; none: built-in defaults)"
    )
    commands = top.add_subparsers(dest="command", required=True)
    found = {}
    for name, run, text in (
        ("serve", cmd_serve, "run the HTTP API and the workers (mail, expiry, apply)"),
        ("worker", cmd_worker, "run only the workers (mail, expiry, apply), no HTTP API"),
        ("migrate", cmd_migrate, "apply missing database migrations and exit"),
        ("demo", cmd_demo, "create demo accounts and a block; print the curl commands of the flow"),
        ("render", cmd_render, "print (or write with --out) a PBX's config; touches no Asterisk"),
        ("diff", cmd_diff, "unified diff of a PBX's config between two revisions"),
        ("apply", cmd_apply, "render, write and apply a PBX's config to its node now"),
        (
            "check",
            cmd_check,
            "compare database, files and live Asterisk per PBX, and the SIP router's table"
            " (drift); --repair fixes",
        ),
        ("new-secrets-key", cmd_new_secrets_key, "print a new key for secrets.keys"),
        (
            "router-reader",
            cmd_router_reader,
            "make (or give a new password to) the database role the SIP router reads its"
            " table with; prints its connection string once",
        ),
        (
            "pjsip-reader",
            cmd_pjsip_reader,
            "make (or give a new password to) the database role a realtime node's Asterisk"
            " reads its PJSIP objects with; prints its connection string once",
        ),
        (
            "import-calls",
            cmd_import_calls,
            "import a node's call records from its CDR spool now (--from-start: all of it"
            " again; what is stored already is skipped)",
        ),
        (
            "rotate-secrets",
            cmd_rotate_secrets,
            "seal every trunk password with the first key of secrets.keys",
        ),
    ):
        found[name] = commands.add_parser(name, parents=[common], help=text, description=text)
        found[name].set_defaults(run=run)
    for name in ("render", "diff", "apply"):
        found[name].add_argument("customer", help="customer number of the PBX's account")
    found["render"].add_argument("--out", help="write the files below this folder")
    found["diff"].add_argument(
        "--from", dest="start", type=int, help="revision (default: previous)"
    )
    found["diff"].add_argument("--to", dest="end", type=int, help="revision (default: latest)")
    found["apply"].add_argument(
        "--full", action="store_true",
        help="reload both modules and check the whole node, not only what changed",
    )  # fmt: skip
    found["apply"].add_argument(
        "--wait", type=float, default=30.0, metavar="SECONDS",
        help="how long to wait for another instance's round on the node (default 30)",
    )  # fmt: skip
    found["router-reader"].add_argument("role", help="role name (e.g. kamailio)")
    found["pjsip-reader"].add_argument("node", help="the realtime node (asterisk.nodes name)")
    found["pjsip-reader"].add_argument("role", help="role name (e.g. asterisk-node1)")
    found["import-calls"].add_argument("node", help="the node (asterisk.nodes name)")
    found["import-calls"].add_argument(
        "--from-start", action="store_true", help="read the spool from its start again"
    )
    found["check"].add_argument("--node", help="only this node (default: every node)")
    found["check"].add_argument(
        "--repair", action="store_true", help="write drifted PBXs again and reload both modules"
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
