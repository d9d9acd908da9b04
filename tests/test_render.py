"""Rendering a small two-site PBX: golden files, determinism, and no way to inject config.

Set UPDATE_GOLDEN=1 to rewrite the golden files after an intended change, then read the
diff as a telecom engineer would.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
from pbx_rows import CARRIER, PASSWORDS, T, block_row, two_site_pbx

from provisioner.db.accounts import Pbx
from provisioner.db.pbx import Extension, RingGroup, UsedBlock
from provisioner.domain import names
from provisioner.domain.credentials import sip_ha1
from provisioner.domain.numbers import parse_block
from provisioner.render.render import node_files, own_files, pbx_files
from provisioner.render.safe import UnsafeValue
from provisioner.render.view import Carrier, build, carrier_patterns
from provisioner.settings import Node, Secret

GOLDEN = Path(__file__).resolve().parent / "golden"


def render_two_site() -> dict[str, str]:
    pbx, used, extensions, groups = two_site_pbx()
    return pbx_files(
        build(pbx, "Spree Logistik GmbH", used, extensions, groups, PASSWORDS), CARRIER
    )


@pytest.mark.parametrize(
    "name",
    [
        "pjsip/tenant-k100200.conf",
        "dialplan/tenant-k100200.conf",
        "pjsip/node-carrier.conf",
        "dialplan/node-carrier.conf",
    ],
)
def test_golden_two_site_pbx(name: str) -> None:
    rendered = {**render_two_site(), **node_files(CARRIER)}[name]
    golden = GOLDEN / name.replace("/", "-")
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"{name} differs from {golden}"


def test_carrier_patterns_cover_exactly_the_block() -> None:
    assert carrier_patterns(parse_block("+4989123456", "0-99", "DE")) == (
        "_+4989123456X", "_+4989123456ZX",
    )  # fmt: skip
    assert carrier_patterns(parse_block("+4989123456", "00-99", "DE")) == ("_+4989123456XX",)
    assert carrier_patterns(parse_block("+4989123456", None, "DE")) == ("+4989123456",)
    assert carrier_patterns(parse_block("+4989123456", "5-7", "DE")) == (
        "+49891234565", "+49891234566", "+49891234567",
    )  # fmt: skip
    # The Z pattern only where the span holds every number of its length but those
    # starting with 0; a span ending at the last number of its length is not enough.
    assert carrier_patterns(parse_block("+4989123456", "5-9", "DE")) == tuple(
        f"+4989123456{n}" for n in range(5, 10)
    )
    assert carrier_patterns(parse_block("+4989123456", "10-50", "DE")) == tuple(
        f"+4989123456{n}" for n in range(10, 51)
    )
    assert carrier_patterns(parse_block("+4989123", "100-999", "DE")) == ("_+4989123ZXX",)
    assert carrier_patterns(parse_block("+4989123", "0-999", "DE")) == (
        "_+4989123X", "_+4989123ZX", "_+4989123ZXX",
    )  # fmt: skip


def test_phone_of_a_reset_block_falls_back_to_the_pbx_own_block() -> None:
    pbx, used, extensions, groups = two_site_pbx()
    view = build(pbx, "Spree", used[:1], extensions, groups)  # Munich block gone
    carla = next(p for p in view.phones if p.ext == "200")
    assert carla.fallback and carla.site_context == "k100200-site-ber-main"
    assert carla.out_number == "+49301234560" and carla.out_account == "K100200"
    files = pbx_files(view, CARRIER)
    assert "+4989" not in "".join(files.values())  # nothing of the Munich block remains


EVIL = [
    "x\n[evil]\ntype=endpoint",
    "x;comment",
    "a=b",
    "#include /etc/passwd",
    "${SHELL(id)}",
    'a"b',
    "x\r\nallow=all",
]


def sections(files: dict[str, str]) -> list[str]:
    return sorted(re.findall(r"^\[[^\]]*\]", "".join(files.values()), flags=re.M))


def options(files: dict[str, str]) -> list[str]:
    return sorted(re.findall(r"^[a-z_]+ ?=", "".join(files.values()), flags=re.M))


@pytest.mark.parametrize("evil", EVIL)
def test_injection_in_names_adds_no_section_and_no_option(evil: str) -> None:
    pbx, used, extensions, groups = two_site_pbx()
    clean = pbx_files(build(pbx, "Spree", used, extensions, groups), CARRIER)
    dirty_ext = [replace(e, name=evil) for e in extensions]
    dirty_groups = [replace(g, name=evil) for g in groups]
    dirty = pbx_files(build(pbx, evil, used, dirty_ext, dirty_groups), CARRIER)
    assert sections(dirty) == sections(clean)
    assert options(dirty) == options(clean)
    text = "".join(dirty.values())
    assert "[evil]" not in text and "${SHELL" not in text and "#include" not in text


@pytest.mark.parametrize("evil", EVIL)
def test_injection_in_tokens_and_secrets_is_refused(evil: str) -> None:
    pbx, used, extensions, groups = two_site_pbx()
    with pytest.raises(UnsafeValue):
        evil_password = {**PASSWORDS, "ber-main": evil}
        pbx_files(build(pbx, "Spree", used, extensions, groups, evil_password), CARRIER)
    with pytest.raises(UnsafeValue):
        broken_used = [replace(used[0], trunk_username=evil), used[1]]
        pbx_files(build(pbx, "Spree", broken_used, extensions, groups, PASSWORDS), CARRIER)
    for broken in (replace(extensions[0], sip_ha1=evil), replace(extensions[0], sip_realm=evil)):
        with pytest.raises(UnsafeValue):
            pbx_files(build(pbx, "Spree", used, [broken], groups, PASSWORDS), CARRIER)
    with pytest.raises(UnsafeValue):
        pbx_files(build(replace(pbx, customer=evil), "Spree", used, extensions, groups), CARRIER)


def test_the_longest_values_the_api_accepts_render() -> None:
    """A 32-character customer, a block id as long as the API allows, a 32-character
    pickup group, a 5-digit extension: every generated name fits Asterisk."""
    from provisioner.render.view import BLOCK_ID_MAX, MAX_NAME, SLUG_MAX

    pbx = Pbx(1, "C" * SLUG_MAX, "c" * SLUG_MAX, T, "default")
    block_id = "b" * BLOCK_ID_MAX
    used = [UsedBlock(block_row(block_id, pbx.customer, "+4930123456", "0-99"),
                      "u" * 64, None, None, "12345")]  # fmt: skip
    ha1 = sip_ha1(f"{pbx.slug}-12345", "provisioner", "p" * 24)
    phone = Extension(1, "12345", "N" * 100, block_id, "+49301234561", "g" * 32, T, T,
                      "provisioner", ha1)  # fmt: skip
    group = RingGroup(1, "54321", "R" * 100, "hunt", ["12345"], 300, T, T)
    files = pbx_files(build(pbx, "A" * 200, used, [phone], [group], {block_id: "x" * 128}),
                      CARRIER)  # fmt: skip
    names = {n for text in files.values() for n in re.findall(r"^\[([^\]]+)\]", text, re.M)}
    assert f"{pbx.slug}-trunk-{block_id}" in names
    assert max(len(n) for n in names) == MAX_NAME


def test_an_interpolation_without_a_filter_is_checked_as_a_token() -> None:
    """A template line that forgets its filter cannot write unchecked text."""
    from provisioner.render.render import ENVIRONMENT

    template = ENVIRONMENT.from_string("[{{ name }}]\ncallerid = {{ caller|name }}\n")
    assert template.render(name="k1-100", caller="A;B") == "[k1-100]\ncallerid = AB\n"
    for evil in EVIL:
        with pytest.raises(UnsafeValue):
            template.render(name=evil, caller="x")


def test_the_naming_rule_names_a_pbxs_objects_and_reads_a_site_back() -> None:
    """domain/names.py: every name of a PBX starts with its slug and a dash, and is the
    PBX's by that (a slug that is another's prefix is not); a site's block is read back
    from its context, and no other context of the PBX is a site."""
    slug = "k100200"
    made = [
        names.phone(slug, "100"), names.trunk(slug, "ber-main"), names.internal(slug),
        names.site(slug, "ber-main"), names.inbound(slug, "ber-main"), names.outbound(slug),
        names.pickup_group(slug, "office"),
    ]  # fmt: skip
    assert made == [
        "k100200-100", "k100200-trunk-ber-main", "k100200-internal",
        "k100200-site-ber-main", "k100200-in-ber-main", "k100200-outbound",
        "k100200-office",
    ]  # fmt: skip
    assert all(names.owns(slug, name) for name in made)
    assert names.owned_prefix(slug) == "k100200-"
    assert not names.owns("k10020", "k100200-100") and not names.owns(slug, "k1002000-100")
    assert names.site_block(slug, names.site(slug, "muc-2")) == "muc-2"
    assert names.site_block(slug, names.internal(slug)) is None
    assert names.site_block(slug, names.site("k300400", "muc-2")) is None


def test_the_node_files_follow_the_nodes_carrier() -> None:
    node = Node(
        name="default", ami_username="x", ami_secret=Secret("x"), output_dir=Path("/nonexistent"),
        carrier_host="127.0.0.2", carrier_port=5070, router_host="127.0.0.9",
    )  # fmt: skip
    own = own_files(node)
    assert own == node_files(Carrier("127.0.0.2", 5070, ("127.0.0.9",)))
    assert "127.0.0.2:5070" in own["pjsip/node-carrier.conf"]
    # Two routers: one address each; no router: none.
    two = replace(node, router_host="127.0.0.3:5062,127.0.0.4:5062")
    assert Carrier.of(two).routers == ("127.0.0.3:5062", "127.0.0.4:5062")
    assert Carrier.of(replace(node, router_host="")).routers == ()


def test_each_door_keeps_what_it_lets_through_and_says_what_it_refuses() -> None:
    """render/safe.py, filter by filter: the exact text a value becomes, and the reason
    a refused one names (it is what the round's log and the apply error show)."""
    from provisioner.render import safe

    assert safe.address("127.0.0.3:5062") == "127.0.0.3:5062"
    assert safe.address("[2001:db8::1]:5060") == "[2001:db8::1]:5060"
    assert safe.address("sbc.carrier.example") == "sbc.carrier.example"
    with pytest.raises(UnsafeValue, match=re.escape("not a network address: '10.0.0.1\\n[x]'")):
        safe.address("10.0.0.1\n[x]")
    with pytest.raises(UnsafeValue, match=re.escape("not a config token: 'a=b'")):
        safe.token("a=b")
    with pytest.raises(UnsafeValue, match=r"^a secret holds characters config cannot carry$"):
        safe.secret("pa;ss")
    # Underscores become spaces, the rest of what config could read is dropped, runs of
    # blanks are one, 60 characters at most, and a name with nothing left is "PBX".
    assert safe.display_name("Müller_GmbH; [Zentrale]") == "Müller GmbH Zentrale"
    assert safe.display_name("x" * 61) == "x" * 60
    assert safe.display_name(';"[]=${}') == "PBX"
    # A comment keeps its words apart where a character was dropped, 120 at most.
    assert safe.comment("Filiale;München\n[new]") == "Filiale München new"
    assert safe.comment("y" * 121) == "y" * 120


def test_a_phone_sited_on_a_block_gone_falls_back_to_an_own_block_before_a_borrowed_one() -> None:
    pbx, (berlin, munich), extensions, groups = two_site_pbx()
    gone = [replace(e, site_block="ham-main", did=None) for e in extensions]
    view = build(pbx, "Spree", [munich, berlin], gone, groups)  # the borrowed block first
    assert {p.site_block for p in view.phones} == {"ber-main"}
    # With no own block left, the first borrowed one is the outside line.
    view = build(pbx, "Spree", [munich], gone, groups)
    assert {(p.site_block, p.out_account) for p in view.phones} == {("muc-main", "K200300")}


def test_a_pbx_without_blocks_has_internal_calls_only() -> None:
    pbx, _, extensions, groups = two_site_pbx()
    view = build(pbx, "Spree", [], extensions, groups)
    assert not view.trunks and not view.sites
    for p in view.phones:
        assert (p.site_context, p.fallback) == ("k100200-internal", True)
        assert (p.out_number, p.out_trunk, p.out_account, p.out_block) == (None,) * 4
        assert (p.site_number, p.site_trunk, p.site_account, p.site_block) == (None,) * 4
    pbx_files(view, CARRIER)  # renders


def test_a_registering_trunk_gets_a_registration_and_the_others_none() -> None:
    pbx, used, extensions, groups = two_site_pbx()
    with_login = [replace(u, trunk_username=f"u-{u.block.id}") for u in used]
    registering = [replace(with_login[0], trunk_register=True), with_login[1]]
    view = build(pbx, "Spree", registering, extensions, groups, PASSWORDS)
    assert [t.register for t in view.trunks] == [True, False]
    text = "".join(pbx_files(view, CARRIER).values())
    assert text.count("type = registration") == 1
    assert "client_uri = sip:u-ber-main@127.0.0.2:5060" in text
