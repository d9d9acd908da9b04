"""Departures: a PBX that moved to another node is removed from the old one once it is
live on the new one."""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.db import Conn
from provisioner.db.accounts import PBX_COLUMNS, Pbx, with_pbx


@dataclass(frozen=True)
class Leaving:
    """A PBX that moved away from a node and is live on its new one: the old node
    removes the files it has of it (`files`, redacted: only paths and names count)."""

    pbx: Pbx
    files: dict[str, str]


async def leaving(conn: Conn, node: str) -> list[Leaving]:
    async with conn.cursor(row_factory=with_pbx(Leaving)) as cur:
        await cur.execute(
            f"SELECT {PBX_COLUMNS}, coalesce(r.files, '{{}}') AS files"
            " FROM pbxes p JOIN apply_state s ON s.pbx_id = p.id"
            " LEFT JOIN config_revisions r"
            "   ON r.pbx_id = p.id AND r.revision = p.leaving_revision"
            " WHERE p.leaving_node = %s AND s.state = 'applied' AND s.good_revision IS NOT NULL"
            " ORDER BY p.id",
            (node,),
        )
        return await cur.fetchall()


async def left(conn: Conn, pbx_id: int) -> None:
    await conn.execute(
        "UPDATE pbxes SET leaving_node = NULL, leaving_revision = NULL WHERE id = %s", (pbx_id,)
    )
