"""A PBX rendered for its node from what the database holds (render/load.files_for_node),
the one path the apply, the drift check and the console take: the trunk password opened
only with a key box, the node's carrier in the trunk, the PBX's own blocks and phones.
Real PostgreSQL, through the API as the portal fills it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from fixtures_service import Api
from helpers import TARGET, scene

from provisioner.db import accounts
from provisioner.render.load import files_for_node, load_view
from provisioner.render.render import pbx_files
from provisioner.render.view import Carrier
from provisioner.settings import Node, Secret, Settings

PBX = f"/v1/accounts/{TARGET}/pbx"
BERLIN = {"number": "+493012345", "range": "0-99", "mode": "pbx"}


async def test_a_pbx_is_rendered_for_its_node_from_the_database(
    api: Api, settings: Settings, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    await scene(api)
    await api.ok("PUT", f"/v1/accounts/{TARGET}/blocks/ber-main", {
        **BERLIN, "trunk": {"username": "k100200-ber", "password": "Berlin-trunk-1"},
    })  # fmt: skip
    await api.ok("PUT", f"{PBX}/extensions/100", {"name": "Anna", "site_block": "ber-main"})
    node = Node(name="default", ami_username="x", ami_secret=Secret("x"), output_dir=tmp_path,
                carrier_host="192.0.2.7", carrier_port=5080)  # fmt: skip
    async with await psycopg.AsyncConnection.connect(db.info.dsn) as conn:
        pbx = await accounts.get_pbx(conn, TARGET)
        assert pbx is not None
        with_secrets = await files_for_node(conn, pbx, node, settings.secret_box())
        without = await files_for_node(conn, pbx, node, None)
        view = await load_view(conn, pbx, settings.secret_box())

    slug = TARGET.lower()
    assert sorted(with_secrets) == [f"dialplan/tenant-{slug}.conf", f"pjsip/tenant-{slug}.conf"]
    assert with_secrets == pbx_files(view, Carrier("192.0.2.7", 5080))
    pjsip = with_secrets[f"pjsip/tenant-{slug}.conf"]
    assert "password = Berlin-trunk-1" in pjsip, "the key box opens the sealed password"
    assert "contact = sip:192.0.2.7:5080" in pjsip, "the trunk goes to the node's carrier"
    assert f"[{slug}-100]" in pjsip, "the phone of extension 100"
    assert "Berlin-trunk-1" not in "".join(without.values()), "no box, no password"
    assert without[f"dialplan/tenant-{slug}.conf"] == with_secrets[f"dialplan/tenant-{slug}.conf"]
    dialplan = with_secrets[f"dialplan/tenant-{slug}.conf"]
    # The block's numbers (0-99 after +493012345) come in from the carrier, billed to B.
    assert "exten => _+493012345X,1,Set(CHANNEL(accountcode)=K100200)" in dialplan
    assert "exten => _+493012345ZX,1,Set(CHANNEL(accountcode)=K100200)" in dialplan
