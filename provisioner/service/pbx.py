"""The PBX model the portal manages: extensions and ring groups; their config view."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from provisioner.db import Conn, apply_queue
from provisioner.db import accounts as db_accounts
from provisioner.db import assignments as db_assignments
from provisioner.db import blocks as db_blocks
from provisioner.db import pbx as db_pbx
from provisioner.db.accounts import Pbx
from provisioner.db.pbx import Extension, RingGroup
from provisioner.domain import names, numbering, rules
from provisioner.domain.credentials import sip_ha1
from provisioner.domain.errors import Conflict, InvalidInput, NotFound
from provisioner.domain.numbering import Plan
from provisioner.render.load import load_view
from provisioner.render.view import PbxView
from provisioner.service import accounts
from provisioner.service.unit import Unit


def check_ext(ext: str, plan: Plan, field: str = "ext") -> str:
    if not rules.EXTENSION.fullmatch(ext):
        raise InvalidInput(
            "an extension has 2 to 5 digits and does not start with 0", field=field,
            code="invalid_extension",
        )  # fmt: skip
    if plan.is_reserved(ext):
        raise InvalidInput(
            f"{ext} is an emergency or service number here ({plan.described})",
            field=field, code="reserved_extension",
        )  # fmt: skip
    return ext


async def require_pbx(u: Unit, customer: str) -> Pbx:
    u.actor.require_one_of(customer)
    await accounts.require(u, customer)
    pbx = await db_accounts.get_pbx(u.conn, customer)
    if pbx is None:
        raise NotFound(f"account {customer} has no cloud PBX", code="pbx_not_found")
    return pbx


async def _used_numbers(conn: Conn, pbx: Pbx) -> tuple[set[str], set[str]]:
    """(block ids, numbers) this PBX uses now."""
    used = await db_pbx.used_blocks(conn, pbx.id)
    return {u.block.id for u in used}, {n for u in used for n in u.block.block.numbers()}


@dataclass(frozen=True)
class ExtensionResult:
    extension: Extension
    created: bool
    # The phone's SIP password, only when it was created: shown once, stored as a hash.
    password: str | None = field(default=None, repr=False)


async def put_extension(
    u: Unit,
    customer: str,
    ext: str,
    *,
    name: str,
    site_block: str,
    did: str | None,
    pickup_group: str | None,
) -> ExtensionResult:
    pbx = await require_pbx(u, customer)
    check_ext(ext, numbering.plan(u.policy.country))
    name = accounts.check_name(name)
    if pickup_group is not None and not rules.NAME.fullmatch(pickup_group):
        raise InvalidInput(
            "a pickup group is 1 to 32 lower-case letters, digits or '-'",
            field="pickup_group", code="invalid_pickup_group",
        )  # fmt: skip
    await db_pbx.lock_pbx(u.conn, pbx.id)
    block_ids, numbers = await _used_numbers(u.conn, pbx)
    if site_block not in block_ids:
        raise InvalidInput(
            f"block {site_block} is not used by this PBX", field="site_block",
            code="site_block_not_used",
        )  # fmt: skip
    if did is not None:
        if did not in numbers:
            raise InvalidInput(
                f"{did} is no number of a block this PBX uses", field="did",
                code="did_not_in_pbx",
            )  # fmt: skip
        holder = await db_pbx.did_owner(u.conn, did)
        if holder is not None and holder != (pbx.id, ext):
            raise Conflict(f"{did} rings extension {holder[1]} already", field="did",
                           code="did_taken")  # fmt: skip
    if await db_pbx.ring_group(u.conn, pbx.id, ext) is not None:
        raise Conflict(f"{ext} is a ring group of this PBX", field="ext", code="ext_taken")
    password = secrets.token_urlsafe(18)
    realm = u.policy.sip_realm
    row, created = await db_pbx.upsert_extension(
        u.conn, pbx.id, ext, name=name, site_block=site_block, did=did,
        pickup_group=pickup_group, now=u.now,
        new_credentials=(realm, sip_ha1(sip_username(pbx, ext), realm, password)),
    )  # fmt: skip
    await apply_queue.request(u.conn, pbx.id, f"extension {ext}", u.now)
    return ExtensionResult(row, created, password if created else None)


def sip_username(pbx: Pbx, ext: str) -> str:
    """A phone registers as its endpoint's name."""
    return names.phone(pbx.slug, ext)


async def view_of(u: Unit, customer: str) -> PbxView:
    """The PBX as its config sees it now (what each extension falls back to); without
    trunk passwords, which the API never needs."""
    return await load_view(u.conn, await require_pbx(u, customer), None)


async def list_extensions(u: Unit, customer: str) -> tuple[list[Extension], PbxView]:
    pbx = await require_pbx(u, customer)
    return await db_pbx.extensions(u.conn, pbx.id), await load_view(u.conn, pbx, None)


async def put_ring_group(
    u: Unit,
    customer: str,
    ext: str,
    *,
    name: str,
    strategy: str,
    members: list[str],
    ring_seconds: int,
) -> tuple[RingGroup, bool]:
    pbx = await require_pbx(u, customer)
    check_ext(ext, numbering.plan(u.policy.country))
    name = accounts.check_name(name)
    # The strategy, the ring time and the members' count and uniqueness come checked from
    # the request's schema (openapi.yaml); whether each member exists is known only here.
    await db_pbx.lock_pbx(u.conn, pbx.id)
    known = {e.ext for e in await db_pbx.extensions(u.conn, pbx.id)}
    for member in members:
        if member not in known:
            raise InvalidInput(f"{member} is no extension of this PBX", field="members",
                               code="unknown_member")  # fmt: skip
    if ext in known:
        raise Conflict(f"{ext} is an extension of this PBX", field="ext", code="ext_taken")
    row, created = await db_pbx.upsert_ring_group(
        u.conn, pbx.id, ext, name=name, strategy=strategy, members=members,
        ring_seconds=ring_seconds, now=u.now,
    )  # fmt: skip
    await apply_queue.request(u.conn, pbx.id, f"ring group {ext}", u.now)
    return row, created


async def set_default_target(
    u: Unit, customer: str, block_id: str, target: str | None
) -> str | None:
    """Where the PBX rings numbers of a block that have no extension of their own: one
    of its own extensions or ring groups, or None (the caller hears busy). The PBX that
    uses the block decides: its owner for its own PBX, the target of an assignment for
    the PBX the block is assigned to (already while the assignment waits for its
    confirmations, so the numbers ring somewhere from the first call)."""
    pbx = await require_pbx(u, customer)
    block = await db_blocks.get(u.conn, block_id, lock=True)
    if block is None:
        raise NotFound(f"no block {block_id}", code="block_not_found")
    assignment = await db_assignments.live_for_block(u.conn, block_id)
    on_its_way = assignment is not None and assignment.target_pbx_id == pbx.id
    if block.owner != customer and not on_its_way:
        # Not a party: nothing about another account's block beyond "not here".
        raise NotFound(f"no block {block_id}", code="block_not_found")
    await db_pbx.lock_pbx(u.conn, pbx.id)
    if target is not None:
        check_ext(target, numbering.plan(u.policy.country), field="default_target")
        if not await db_pbx.is_target(u.conn, pbx.id, target):
            raise InvalidInput(
                f"{target} is no extension or ring group of {customer}'s PBX",
                field="default_target", code="unknown_target",
            )  # fmt: skip
    await db_pbx.set_default_target(u.conn, pbx.id, block_id, target, u.now)
    if await db_pbx.pbx_using(u.conn, block_id) == pbx.id:
        await apply_queue.request(u.conn, pbx.id, f"block {block_id} default target", u.now)
    return target


async def _default_target_of(u: Unit, pbx: Pbx, ext: str) -> list[str]:
    """The blocks whose unrouted numbers this PBX rings at `ext`."""
    return await db_pbx.blocks_ringing(u.conn, pbx.id, ext)


async def delete_extension(u: Unit, customer: str, ext: str) -> None:
    """Remove a phone. Its DID (if any) rings the block's default target again. Refused
    while a ring group has it as a member or a block's unrouted numbers ring it: the
    portal changes those first, so no call is silently sent nowhere."""
    pbx = await require_pbx(u, customer)
    await db_pbx.lock_pbx(u.conn, pbx.id)
    if await db_pbx.extension(u.conn, pbx.id, ext) is None:
        raise NotFound(f"{customer}'s PBX has no extension {ext}", code="extension_not_found")
    groups = [g.ext for g in await db_pbx.ring_groups(u.conn, pbx.id) if ext in g.members]
    if groups:
        raise Conflict(f"extension {ext} is a member of ring group {', '.join(groups)}",
                       code="extension_in_use")  # fmt: skip
    blocks = await _default_target_of(u, pbx, ext)
    if blocks:
        raise Conflict(f"extension {ext} is the default target of block {', '.join(blocks)}",
                       code="extension_in_use")  # fmt: skip
    await db_pbx.delete_extension(u.conn, pbx.id, ext)
    await apply_queue.request(u.conn, pbx.id, f"extension {ext} deleted", u.now)


async def delete_ring_group(u: Unit, customer: str, ext: str) -> None:
    """Remove a ring group; refused while a block's unrouted numbers ring it."""
    pbx = await require_pbx(u, customer)
    await db_pbx.lock_pbx(u.conn, pbx.id)
    if await db_pbx.ring_group(u.conn, pbx.id, ext) is None:
        raise NotFound(f"{customer}'s PBX has no ring group {ext}", code="ring_group_not_found")
    blocks = await _default_target_of(u, pbx, ext)
    if blocks:
        raise Conflict(f"ring group {ext} is the default target of block {', '.join(blocks)}",
                       code="ring_group_in_use")  # fmt: skip
    await db_pbx.delete_ring_group(u.conn, pbx.id, ext)
    await apply_queue.request(u.conn, pbx.id, f"ring group {ext} deleted", u.now)


async def list_ring_groups(u: Unit, customer: str) -> list[RingGroup]:
    pbx = await require_pbx(u, customer)
    return await db_pbx.ring_groups(u.conn, pbx.id)
