"""A small two-site PBX as typed rows, for tests that render without a database."""

from __future__ import annotations

from datetime import UTC, datetime

from provisioner.db.accounts import Pbx
from provisioner.db.blocks import BlockRow
from provisioner.db.pbx import Extension, RingGroup, UsedBlock
from provisioner.domain.credentials import sip_ha1
from provisioner.domain.numbers import parse_block
from provisioner.render.view import Carrier

T = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
CARRIER = Carrier("127.0.0.2", 5060)


def block_row(block_id: str, owner: str, number: str, range_text: str | None) -> BlockRow:
    b = parse_block(number, range_text, "DE")
    return BlockRow(
        block_id, owner, b.base, b.range_first, b.range_last, b.country_code, b.area_code,
        "pbx", T, T,
    )  # fmt: skip


def two_site_pbx() -> tuple[Pbx, list[UsedBlock], list[Extension], list[RingGroup]]:
    pbx = Pbx(1, "K100200", "k100200", T, "default")
    berlin = UsedBlock(
        block_row("ber-main", "K100200", "+4930123456", "0-99"), "k100200-ber", None, None, "100"
    )
    munich = UsedBlock(
        block_row("muc-main", "K200300", "+4989123456", "0-99"), "k200300-muc", None, None, "201"
    )

    def ext(number: str, name: str, site: str, did: str | None, group: str | None) -> Extension:
        ha1 = sip_ha1(f"k100200-{number}", "provisioner", f"pw{number}" + "x" * 20)
        return Extension(1, number, name, site, did, group, T, T, "provisioner", ha1)

    extensions = [
        ext("100", "Anna Berlin", "ber-main", None, "sales"),
        ext("101", "Ben Berlin", "ber-main", "+49301234561", None),
        ext("200", "Carla München", "muc-main", "+49891234560", "sales"),
        ext("201", "Dirk München", "muc-main", "+49891234561", None),
    ]
    groups = [RingGroup(1, "600", "Reception", "ringall", ["101", "201"], 20, T, T)]
    return pbx, [berlin, munich], extensions, groups


# The opened trunk passwords, by block.
PASSWORDS = {"ber-main": "Ber-secret-1", "muc-main": "Muc-secret-1"}
