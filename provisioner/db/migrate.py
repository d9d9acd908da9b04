"""Numbered plain-SQL migrations, applied in order in one transaction (a savepoint each,
under a lock on schema_migrations): a failing migration leaves the database as it was."""

from __future__ import annotations

import logging
from importlib import resources

from provisioner.db import Conn

log = logging.getLogger(__name__)

# Any fixed number will do; it only has to be the same for every instance.
_LOCK_ID = 0x70726F76


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped with the package."""
    found = []
    for entry in resources.files("provisioner.db.migrations").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: Conn) -> list[str]:
    """Apply what is missing; return the names applied. Safe with many instances starting."""
    applied_now = []
    await conn.set_autocommit(False)
    async with conn.transaction():
        # Instances starting together wait here for each other instead of racing. On a
        # migrated database on the table's lock, which no reader role can take (it may
        # take any advisory lock); only a new database, which has no reader role yet,
        # needs an advisory lock to create the table.
        cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NULL")
        row = await cur.fetchone()
        if row is not None and row[0]:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        await conn.execute("LOCK TABLE schema_migrations IN SHARE ROW EXCLUSIVE MODE")
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
            log.info("applied migration %s", name)
            applied_now.append(name)
    return applied_now
