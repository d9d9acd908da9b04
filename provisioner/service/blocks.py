"""Number blocks: created by their owner for good, switched between standard and PBX mode."""

from __future__ import annotations

from dataclasses import dataclass, field

from provisioner.db import Conn, apply_queue
from provisioner.db import accounts as db_accounts
from provisioner.db import assignments as db_assignments
from provisioner.db import blocks as db_blocks
from provisioner.db import pbx as db_pbx
from provisioner.db.blocks import BlockRow
from provisioner.domain import rules
from provisioner.domain.credentials import SecretBox
from provisioner.domain.errors import Conflict, InvalidInput, NotFound
from provisioner.domain.numbers import parse_block
from provisioner.render import safe
from provisioner.service import accounts
from provisioner.service import pbx as pbx_service
from provisioner.service.unit import Unit


def check_block_id(block_id: str) -> str:
    if not rules.BLOCK_ID.fullmatch(block_id):
        raise InvalidInput(
            f"a block id has 1 to {rules.BLOCK_ID_MAX} letters, digits, '.', '_' or '-'",
            field="block_id",
            code="invalid_block_id",
        )
    return block_id


def check_mode(mode: str) -> str:
    if mode not in rules.MODES:
        raise InvalidInput("mode must be standard or pbx", field="mode", code="invalid_mode")
    return mode


def no_block(block_id: str) -> NotFound:
    return NotFound(f"no block {block_id}", code="block_not_found")


async def require(
    u: Unit, block_id: str, *, lock: bool = False, owner_only: bool = False
) -> BlockRow:
    """The block; with `owner_only`, a block the acting customer does not own is answered
    as if it did not exist (a non-party learns nothing of other accounts' blocks)."""
    row = await db_blocks.get(u.conn, check_block_id(block_id), lock=lock)
    if row is None or (owner_only and not u.actor.acts_for(row.owner)):
        raise no_block(block_id)
    return row


@dataclass(frozen=True)
class TrunkCredentials:
    """The block's trunk login at the carrier; write-only (never returned or logged)."""

    username: str
    password: str = field(repr=False)
    register: bool = False  # the carrier requires REGISTER with these credentials


def check_trunk(trunk: TrunkCredentials) -> TrunkCredentials:
    if not rules.TRUNK_USER.fullmatch(trunk.username):
        raise InvalidInput(
            "trunk.username: 1 to 64 letters, digits, '.', '_', '+' or '-'",
            field="trunk.username", code="invalid_trunk",
        )  # fmt: skip
    if len(trunk.password) < 8 or not safe.SECRET.fullmatch(trunk.password):
        raise InvalidInput(
            "trunk.password: 8 to 128 printable characters without spaces, quotes,"
            " ; # [ ] = $ { } or backslash",
            field="trunk.password", code="invalid_trunk",
        )  # fmt: skip
    return trunk


async def put_block(
    u: Unit,
    customer: str,
    block_id: str,
    number: str,
    range_text: str | None,
    mode: str,
    *,
    trunk: TrunkCredentials | None = None,
    default_target: str | None = None,
) -> tuple[BlockRow, bool]:
    """Create a block, or (same numbers) change its mode, trunk or default target.
    Numbers and owner never change."""
    check_block_id(block_id)
    u.actor.require_one_of(customer)
    check_mode(mode)
    block = parse_block(number, range_text, u.policy.country)
    if trunk is not None:
        check_trunk(trunk)
        if not u.policy.secrets.configured:
            u.policy.secrets.seal(trunk.password)  # raises the 422 that says why
    if default_target is not None and not rules.EXTENSION.fullmatch(default_target):
        raise InvalidInput(
            "default_target is an extension or ring group number", field="default_target",
            code="invalid_extension",
        )  # fmt: skip
    if default_target is not None and await db_accounts.get_pbx(u.conn, customer) is None:
        raise Conflict(
            f"{customer} has no cloud PBX: default_target names an extension of the owner's"
            " own PBX; the PBX a block is assigned to sets its own"
            " (PUT /v1/accounts/{customer}/pbx/blocks/{block_id})",
            field="default_target", code="no_pbx",
        )  # fmt: skip
    await accounts.require(u, customer)
    existing = await db_blocks.get(u.conn, block_id, lock=True)
    if existing is not None:
        if existing.owner != customer:
            # Block ids are one namespace: a taken id must be refused, but the answer
            # says nothing of whose it is, its numbers or its state.
            raise Conflict(
                f"block id {block_id} is taken; choose another",
                field="block_id",
                code="block_id_taken",
            )
        if (existing.base_number, existing.range_first, existing.range_last) != (
            block.base,
            block.range_first,
            block.range_last,
        ):
            raise Conflict(
                f"the numbers of block {block_id} cannot change; create another block",
                field="number",
                code="block_numbers_immutable",
            )
        updated = await _set_mode(u, existing, mode)
        await _set_routing(u, updated, trunk, default_target)
        return updated, False
    try:
        row = await db_blocks.insert(u.conn, block_id, customer, block, mode, u.now)
    except db_blocks.Overlap:
        # Name the customer's own blocks only: another account's block ids are not theirs
        # to learn.
        found = await db_blocks.overlapping(u.conn, block)
        names = [bid for bid, owner in found if owner == customer]
        if len(names) < len(found) or not found:
            names.append("another account's block")
        raise Conflict(
            f"these numbers overlap {', '.join(names)}", field="number", code="numbers_overlap"
        ) from None
    if row is None:  # created by a concurrent request in between: treat as the update
        return await put_block(
            u, customer, block_id, number, range_text, mode,
            trunk=trunk, default_target=default_target,
        )  # fmt: skip
    await _set_routing(u, row, trunk, default_target)
    pbx_id = await db_pbx.pbx_using(u.conn, row.id)
    if pbx_id is not None:
        await apply_queue.request(u.conn, pbx_id, f"block {block_id} created", u.now)
    return row, True


async def _set_routing(
    u: Unit, row: BlockRow, trunk: TrunkCredentials | None, default_target: str | None
) -> None:
    """Trunk credentials and the owner's own PBX's default target, where given; applies
    the PBX using the block."""
    if default_target is not None:
        await pbx_service.set_default_target(u, row.owner, row.id, default_target)
    if trunk is None:
        return
    sealed = u.policy.secrets.seal(trunk.password)
    await db_pbx.set_trunk(u.conn, row.id, trunk.username, sealed, trunk.register, u.now)
    pbx_id = await db_pbx.pbx_using(u.conn, row.id)
    if pbx_id is not None:
        await apply_queue.request(u.conn, pbx_id, f"block {row.id} routing", u.now)


async def list_blocks(u: Unit, customer: str) -> list[BlockRow]:
    u.actor.require_one_of(customer)
    await accounts.require(u, customer)
    return await db_blocks.of_owner(u.conn, customer)


async def set_mode(u: Unit, block_id: str, mode: str) -> BlockRow:
    check_mode(mode)
    row = await require(u, block_id, lock=True, owner_only=True)
    return await _set_mode(u, row, mode)


async def _set_mode(u: Unit, row: BlockRow, mode: str) -> BlockRow:
    if row.mode == mode:
        return row
    if mode == "standard" and await db_assignments.live_for_block(u.conn, row.id) is not None:
        raise Conflict(
            f"block {row.id} is assigned to another account's PBX (or about to be);"
            " reset the assignment first",
            field="mode",
            code="block_in_use",
        )
    before = await db_pbx.pbx_using(u.conn, row.id)
    row = await db_blocks.set_mode(u.conn, row.id, mode, u.now)
    after = await db_pbx.pbx_using(u.conn, row.id)
    for pbx_id in sorted(p for p in (before, after) if p is not None):
        await apply_queue.request(u.conn, pbx_id, f"block {row.id} mode {mode}", u.now)
    return row


async def used_by(u: Unit, row: BlockRow) -> str | None:
    """Customer number of the account whose PBX uses the block, if any."""
    pbx_id = await db_pbx.pbx_using(u.conn, row.id)
    if pbx_id is None:
        return None
    pbx = await db_accounts.get_pbx_by_id(u.conn, pbx_id)
    return pbx.customer if pbx else None


async def seal_trunk_passwords(conn: Conn, box: SecretBox, *, reseal: bool) -> int:
    """Seal trunk passwords stored in plain text before sealing existed and, with
    `reseal`, put every sealed one under the first key (after a new key was put first).
    Returns how many were written. Without a key nothing can be sealed: 0."""
    if not box.configured:
        return 0
    done = 0
    for block_id, plain in await db_pbx.unsealed_trunks(conn):
        await db_pbx.store_sealed(conn, block_id, box.seal(plain))
        done += 1
    if reseal:
        for block_id, sealed in await db_pbx.sealed_trunks(conn):
            await db_pbx.store_sealed(conn, block_id, box.reseal(sealed))
            done += 1
    return done
