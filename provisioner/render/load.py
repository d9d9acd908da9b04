"""A PBX's typed view, loaded from the database: the input of its templates. Used by
the apply, the drift check and the config API alike, so all render the same thing."""

from __future__ import annotations

from provisioner.db import Conn
from provisioner.db import accounts as db_accounts
from provisioner.db import pbx as db_pbx
from provisioner.db.accounts import Pbx
from provisioner.domain.credentials import SecretBox
from provisioner.render.view import PbxView, build


async def load_view(conn: Conn, pbx: Pbx, secrets_box: SecretBox | None) -> PbxView:
    """The typed view of a PBX, from what the database holds now. With a box, trunk
    passwords are opened for the files on disk; without, they stay out of the view."""
    account = await db_accounts.get(conn, pbx.customer)
    assert account is not None
    used = await db_pbx.used_blocks(conn, pbx.id)
    passwords = {}
    if secrets_box is not None:
        for u in used:
            if u.trunk_sealed is not None:
                passwords[u.block.id] = secrets_box.open(u.trunk_sealed)
            elif u.trunk_unsealed_legacy is not None:
                passwords[u.block.id] = u.trunk_unsealed_legacy
    return build(
        pbx,
        account.name,
        used,
        await db_pbx.extensions(conn, pbx.id),
        await db_pbx.ring_groups(conn, pbx.id),
        passwords,
    )
