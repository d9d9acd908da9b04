"""Revisions of a PBX's generated config: each a set of files (secrets redacted), the
history engineers diff."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from provisioner.db import Conn


@dataclass(frozen=True)
class Revision:
    pbx_id: int
    revision: int
    sha256: str
    files: dict[str, str]
    created_at: datetime


async def latest_revision(conn: Conn, pbx_id: int) -> Revision | None:
    async with conn.cursor(row_factory=class_row(Revision)) as cur:
        await cur.execute(
            "SELECT * FROM config_revisions WHERE pbx_id = %s ORDER BY revision DESC LIMIT 1",
            (pbx_id,),
        )
        return await cur.fetchone()


async def revision(conn: Conn, pbx_id: int, number: int) -> Revision | None:
    async with conn.cursor(row_factory=class_row(Revision)) as cur:
        await cur.execute(
            "SELECT * FROM config_revisions WHERE pbx_id = %s AND revision = %s",
            (pbx_id, number),
        )
        return await cur.fetchone()


async def add_revision(
    conn: Conn, pbx_id: int, sha256: str, files: dict[str, str], now: datetime
) -> Revision:
    async with conn.cursor(row_factory=class_row(Revision)) as cur:
        await cur.execute(
            "INSERT INTO config_revisions (pbx_id, revision, sha256, files, created_at)"
            " SELECT %s, coalesce(max(revision), 0) + 1, %s, %s, %s"
            " FROM config_revisions WHERE pbx_id = %s RETURNING *",
            (pbx_id, sha256, Jsonb(files), now, pbx_id),
        )
        row = await cur.fetchone()
    assert row is not None
    return row
