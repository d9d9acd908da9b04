"""Which PBX uses a block: the rule every config and apply decision follows."""

from __future__ import annotations

from provisioner.db import Conn
from provisioner.db import accounts as db_accounts
from provisioner.db import assignments as db_assignments
from provisioner.db.blocks import BlockRow


async def pbx_using(conn: Conn, block: BlockRow) -> int | None:
    """The PBX id that uses the block now, or None.

    An active assignment wins; otherwise a `pbx` block is used by its owner's own PBX,
    if the owner has one.
    """
    if block.mode != "pbx":
        return None
    live = await db_assignments.live_for_block(conn, block.id)
    if live is not None and live.state == "active":
        return live.target_pbx_id
    own = await db_accounts.get_pbx(conn, block.owner)
    return own.id if own is not None else None
