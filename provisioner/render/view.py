"""The typed view a PBX's templates see, built by one pure function from database rows.

Names in the generated config derive from the PBX slug, by the rule in domain/names.py.
Calls from the carrier arrive on the node's one carrier endpoint (identified by the SBC's
address) in [carrier-in], to which each PBX adds the numbers of the blocks it uses.

Every name fits Asterisk: a dialplan context name has at most 79 characters (80 with the
terminating NUL); domain/rules.py bounds a block id by the longest name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from provisioner.db.accounts import Pbx
from provisioner.db.pbx import Extension, RingGroup, UsedBlock
from provisioner.domain import names, rules
from provisioner.domain.numbering import plan_for_code
from provisioner.domain.numbers import Block, describe
from provisioner.settings import Node

MAX_NAME = rules.MAX_CONFIG_NAME
SLUG_MAX = rules.CUSTOMER_MAX  # a slug is the customer number in lower case
BLOCK_ID_MAX = rules.BLOCK_ID_MAX


@dataclass(frozen=True)
class InboundRoute:
    number: str  # E.164 as the carrier sends it in the request URI
    target: str  # an extension or ring group number


@dataclass(frozen=True)
class Trunk:
    name: str
    block_id: str
    block_text: str
    owner: str  # the block owner's customer number: the CDR accountcode of its calls
    username: str | None
    password: str | None  # in plain text: the carrier's digest needs it
    in_context: str
    carrier_patterns: tuple[str, ...]  # dialplan extensions covering all its numbers
    routes: tuple[InboundRoute, ...]
    default_target: str | None
    register: bool = False  # registers with the carrier (needs username and password)


@dataclass(frozen=True)
class Phone:
    ext: str
    endpoint: str
    name: str
    realm: str
    ha1: str  # md5(endpoint:realm:password), Asterisk's md5_cred
    site_context: str
    pickup_group: str | None
    out_number: str | None  # caller ID of external calls
    out_trunk: str | None  # the trunk of the block that owns out_number
    out_account: str | None
    out_block: str | None  # the block of out_number (the call's record names it)
    site_number: str | None  # caller ID of emergency calls: the site's number
    site_trunk: str | None
    site_account: str | None
    site_block: str | None
    fallback: bool  # sited on a block this PBX no longer uses


@dataclass(frozen=True)
class RingGroupView:
    ext: str
    name: str
    strategy: str
    ring_seconds: int
    members: tuple[str, ...]  # endpoint names, in hunt order


@dataclass(frozen=True)
class Site:
    context: str
    block_id: str
    area_code: str
    trunk: str
    country_code: str  # of the block's numbers: "49"
    emergency: tuple[str, ...]  # its country's emergency numbers
    services: tuple[str, ...]  # its country's other short numbers (dialplan patterns)
    services_text: str  # the same for people


@dataclass(frozen=True)
class PbxView:
    slug: str
    customer: str
    name: str
    internal_context: str
    outbound_context: str
    phones: tuple[Phone, ...]
    ring_groups: tuple[RingGroupView, ...]
    trunks: tuple[Trunk, ...]
    sites: tuple[Site, ...]


@dataclass(frozen=True)
class Carrier:
    """The node's carrier SBC: where trunks send calls, and whom inbound calls come from."""

    host: str
    port: int
    routers: tuple[str, ...] = ()  # the SIP routers in front of the node, if any

    @classmethod
    def of(cls, node: Node) -> Carrier:
        routers = tuple(node.router_host.split(",")) if node.router_host else ()
        return cls(node.carrier_host, node.carrier_port, routers)


def _listed(items: list[str]) -> str:
    """'115, 116xxx and 118xx'."""
    return " and ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def _site(slug: str, u: UsedBlock, trunk: str) -> Site:
    plan = plan_for_code(u.block.block.country_code)
    return Site(
        context=names.site(slug, u.block.id),
        block_id=u.block.id,
        area_code=u.block.area_code,
        trunk=trunk,
        country_code=plan.country_code,
        emergency=plan.emergency,
        services=plan.services,
        services_text=_listed(
            [s.lstrip("_").replace("X", "x").replace(".", "") for s in plan.services]
        ),
    )


def carrier_patterns(block: Block) -> tuple[str, ...]:
    """Dialplan extensions that match exactly the block's numbers: one pattern per
    extension length where the block holds every number of that length, else each
    number on its own ("0-99": _+4989123456X and _+4989123456ZX)."""
    patterns: list[str] = []
    base = block.base
    for span in block.spans():
        width = span.digits - (len(base) - 1)
        if width == 0:
            patterns.append(base)
            continue
        prefix = int(base[1:]) * 10**width
        last_of_width = prefix + 10**width - 1
        if span.first == prefix and span.last == last_of_width:
            patterns.append(f"_{base}{'X' * width}")
        elif width > 1 and span.first == prefix + 10 ** (width - 1) and span.last == last_of_width:
            patterns.append(f"_{base}Z{'X' * (width - 1)}")
        else:
            patterns.extend(f"+{n}" for n in range(span.first, span.last + 1))
    return tuple(patterns)


def build(
    pbx: Pbx,
    account_name: str,
    used: list[UsedBlock],
    extensions: list[Extension],
    ring_groups: list[RingGroup],
    trunk_passwords: Mapping[str, str] | None = None,
) -> PbxView:
    """The view of one PBX; `trunk_passwords` are the opened trunk passwords by block id."""
    trunk_passwords = trunk_passwords or {}
    slug = pbx.slug
    internal = names.internal(slug)
    by_id = {u.block.id: u for u in used}
    numbers_of = {u.block.id: set(u.block.block.numbers()) for u in used}

    def trunk_name(block_id: str) -> str:
        return names.trunk(slug, block_id)

    def block_of(number: str) -> str | None:
        return next((bid for bid, nums in numbers_of.items() if number in nums), None)

    # Phones sited on a block the PBX no longer uses fall back to its first own block
    # (or, with none, to no outside line at all: internal calls only).
    own = [u for u in used if u.block.owner == pbx.customer]
    fallback_site = (own or used)[0] if used else None

    phones = []
    routes: dict[str, list[InboundRoute]] = {bid: [] for bid in by_id}
    for e in extensions:
        site = by_id.get(e.site_block)
        fallback = site is None
        site = site or fallback_site
        did_block = block_of(e.did) if e.did else None
        if did_block is not None and e.did is not None:
            routes[did_block].append(InboundRoute(e.did, e.ext))
        site_number = site.block.block.first_number() if site else None
        out_block = did_block or (site.block.id if site else None)
        out_number = (e.did if did_block else site_number) if site else None
        phones.append(
            Phone(
                ext=e.ext,
                endpoint=names.phone(slug, e.ext),
                name=e.name,
                realm=e.sip_realm,
                ha1=e.sip_ha1,
                site_context=names.site(slug, site.block.id) if site else internal,
                pickup_group=names.pickup_group(slug, e.pickup_group) if e.pickup_group else None,
                out_number=out_number,
                out_trunk=trunk_name(out_block) if out_block else None,
                out_account=by_id[out_block].block.owner if out_block else None,
                out_block=out_block,
                site_number=site_number,
                site_trunk=trunk_name(site.block.id) if site else None,
                site_account=site.block.owner if site else None,
                site_block=site.block.id if site else None,
                fallback=fallback,
            )
        )

    trunks = tuple(
        Trunk(
            name=trunk_name(u.block.id),
            block_id=u.block.id,
            block_text=describe(u.block.block),
            owner=u.block.owner,
            username=u.trunk_username,
            password=trunk_passwords.get(u.block.id),
            in_context=names.inbound(slug, u.block.id),
            carrier_patterns=carrier_patterns(u.block.block),
            routes=tuple(sorted(routes[u.block.id], key=lambda r: r.number)),
            default_target=u.default_target,
            register=u.trunk_register,
        )
        for u in used
    )
    sites = tuple(_site(slug, u, trunk_name(u.block.id)) for u in used)
    endpoint_of = {p.ext: p.endpoint for p in phones}
    groups = tuple(
        RingGroupView(
            ext=g.ext,
            name=g.name,
            strategy=g.strategy,
            ring_seconds=g.ring_seconds,
            members=tuple(endpoint_of[m] for m in g.members if m in endpoint_of),
        )
        for g in ring_groups
    )
    return PbxView(
        slug=slug,
        customer=pbx.customer,
        name=account_name,
        internal_context=internal,
        outbound_context=names.outbound(slug),
        phones=tuple(phones),
        ring_groups=groups,
        trunks=trunks,
        sites=sites,
    )
