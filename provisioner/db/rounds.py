"""What the apply reads of a node's PBXs, one query each (they are on its path): every
PBX with its latest and last good revision (a full round), only the PBXs with jobs and
what is live of them (an incremental round), the files that must be on disk (before a
res_pjsip reload), and the PBXs whose PJSIP objects wait for that reload."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from provisioner.db import Conn, channels
from provisioner.db.accounts import PBX_COLUMNS, OfPbx, Pbx, with_pbx
from provisioner.db.apply_queue import Job

# The latest revision written and the last one live in both parts, of PBX p.
_REVISIONS = (
    " LEFT JOIN LATERAL (SELECT revision, files FROM config_revisions r"
    "                    WHERE r.pbx_id = p.id ORDER BY revision DESC LIMIT 1) latest"
    "   ON true"
    " LEFT JOIN apply_state s ON s.pbx_id = p.id"
    " LEFT JOIN config_revisions good"
    "   ON good.pbx_id = p.id AND good.revision = s.good_revision"
)


@dataclass(frozen=True, eq=False)  # compared by identity: two PBXs are never "equal"
class Tenant(OfPbx):
    """One PBX of the node as the database has it when a round starts, with the round's
    job for it (None: a full round looks at it without one). No step of the round
    changes it: each returns what it did as a value of its own."""

    pbx: Pbx
    latest: int | None  # the latest revision written
    written: dict[str, str]  # its files (what should be on disk; redacted)
    good: dict[str, str] | None  # the files of the last revision verified live (redacted)
    # Incremental rounds only: the files whose dialplan is live, and whether the PJSIP
    # objects of the latest revision are live.
    live_dialplan: dict[str, str] = field(default_factory=dict)
    pjsip_live: bool = False
    job: Job | None = None


async def node_pbxes(conn: Conn, node: str) -> list[Tenant]:
    """Every PBX of the node with its latest and last good revision (a full round looks
    at all of them)."""
    async with conn.cursor(row_factory=with_pbx(Tenant)) as cur:
        await cur.execute(
            f"SELECT {PBX_COLUMNS}, latest.revision AS latest,"
            " coalesce(latest.files, '{}') AS written, good.files AS good"
            f" FROM pbxes p{_REVISIONS} WHERE p.node = %s ORDER BY p.id",
            (node,),
        )
        return await cur.fetchall()


@dataclass(frozen=True)
class OnDisk(OfPbx):
    """A PBX with the files of its latest revision: what must be on disk."""

    pbx: Pbx
    files: dict[str, str]


async def node_written(conn: Conn, node: str) -> list[OnDisk]:
    """Every PBX of the node with the files of its latest revision only: the check
    before a res_pjsip reload, which holds the node's apply lock."""
    async with conn.cursor(row_factory=with_pbx(OnDisk)) as cur:
        await cur.execute(
            f"SELECT {PBX_COLUMNS}, coalesce(r.files, '{{}}') AS files FROM pbxes p"
            " LEFT JOIN LATERAL (SELECT files FROM config_revisions r"
            "                    WHERE r.pbx_id = p.id ORDER BY revision DESC LIMIT 1) r ON true"
            " WHERE p.node = %s ORDER BY p.id",
            (node,),
        )
        return await cur.fetchall()


async def round_pbxes(conn: Conn, pbx_ids: list[int]) -> list[Tenant]:
    """Only the PBXs with jobs, with what is live of them (an incremental round): a
    round's reads do not grow with the node."""
    async with conn.cursor(row_factory=with_pbx(Tenant)) as cur:
        await cur.execute(
            f"SELECT {PBX_COLUMNS}, latest.revision AS latest,"
            " coalesce(latest.files, '{}') AS written, good.files AS good,"
            " coalesce(dial.files, '{}') AS live_dialplan,"
            " s.pjsip_revision IS NOT DISTINCT FROM latest.revision AS pjsip_live"
            f" FROM pbxes p{_REVISIONS}"
            " LEFT JOIN config_revisions dial"
            "   ON dial.pbx_id = p.id AND dial.revision = s.dialplan_revision"
            " WHERE p.id = ANY(%s) ORDER BY p.id",
            (pbx_ids,),
        )
        return await cur.fetchall()


@dataclass(frozen=True)
class PjsipPending(OfPbx):
    """A PBX whose latest revision's PJSIP objects wait for a reload of res_pjsip."""

    pbx: Pbx
    revision: int
    files: dict[str, str]  # of that revision (redacted)
    live: dict[str, str]  # of the revision whose PJSIP objects are live (redacted)
    since: datetime  # when its dialplan went live


PJSIP_CHANNEL = "pjsip_due"


async def notify_pjsip_due(conn: Conn) -> None:
    """Wake the nodes' PJSIP reloaders when this transaction commits."""
    await channels.notify(conn, PJSIP_CHANNEL)


async def pjsip_pending(conn: Conn, node: str) -> list[PjsipPending]:
    async with conn.cursor(row_factory=with_pbx(PjsipPending)) as cur:
        await cur.execute(
            f"SELECT {PBX_COLUMNS}, s.revision AS revision, r.files AS files,"
            " coalesce(live.files, '{}') AS live, s.updated_at AS since FROM apply_state s"
            " JOIN pbxes p ON p.id = s.pbx_id"
            " JOIN config_revisions r ON r.pbx_id = s.pbx_id AND r.revision = s.revision"
            " LEFT JOIN config_revisions live"
            "   ON live.pbx_id = s.pbx_id AND live.revision = s.pjsip_revision"
            " WHERE p.node = %s AND s.state = 'pending'"
            "   AND s.dialplan_revision = s.revision"
            "   AND s.pjsip_revision IS DISTINCT FROM s.revision"
            " ORDER BY p.id",
            (node,),
        )
        return await cur.fetchall()
