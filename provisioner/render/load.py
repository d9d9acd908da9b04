"""A PBX's typed view, loaded from the database: the input of its templates; and the
PBX's files for its node (`files_for_node`), the one way the apply, the drift check and
the console render a PBX, so all render the same thing."""

from __future__ import annotations

from provisioner.db import Conn
from provisioner.db import accounts as db_accounts
from provisioner.db import pbx as db_pbx
from provisioner.db.accounts import Pbx
from provisioner.domain.credentials import SecretBox
from provisioner.render.render import pbx_files
from provisioner.render.view import Carrier, PbxView, build
from provisioner.settings import Node


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


async def files_for_node(
    conn: Conn, pbx: Pbx, node: Node, secrets_box: SecretBox | None
) -> dict[str, str]:
    """The PBX's files as its node must have them now (with a box, trunk passwords in
    them), by path relative to the node's output folder."""
    return pbx_files(await load_view(conn, pbx, secrets_box), Carrier.of(node))
