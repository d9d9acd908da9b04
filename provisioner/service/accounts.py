"""Accounts and their cloud PBX."""

from __future__ import annotations

import re

from provisioner.db import accounts as db_accounts
from provisioner.db import apply_queue
from provisioner.db import blocks as db_blocks
from provisioner.db import pbx as db_pbx
from provisioner.db.accounts import Account, Pbx
from provisioner.domain import rules
from provisioner.domain.errors import Conflict, InvalidInput, NotFound
from provisioner.service.unit import Unit

# Deliberately plain: the portal validated the address already; this keeps out what
# would break a mail header (spaces, line breaks, angle brackets, commas).
EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def check_customer(customer: str, field: str = "customer") -> str:
    if not rules.CUSTOMER.fullmatch(customer):
        raise InvalidInput(
            "a customer number has 2 to 32 letters and digits",
            field=field,
            code="invalid_customer",
        )
    return customer


async def require(u: Unit, customer: str, *, lock: bool = False) -> Account:
    account = await db_accounts.get(u.conn, check_customer(customer), lock=lock)
    if account is None:
        raise NotFound(f"no account {customer}", code="account_not_found")
    return account


def check_name(name: str) -> str:
    """A name as people give it (an account's, an extension's, a ring group's), without
    the spaces around it. Its length comes checked from the request's schema."""
    if any(not c.isprintable() for c in name):
        raise InvalidInput("name must be printable characters", field="name")
    problem = rules.name_problem(name)
    if problem is not None:
        raise InvalidInput(f"name {problem}", field="name")
    return name.strip()


async def put_account(
    u: Unit, customer: str, name: str, email: str, language: str
) -> tuple[Account, bool]:
    check_customer(customer)
    u.actor.require_one_of(customer)
    # Lengths, types and the language come checked from the request's schema (openapi.yaml).
    name = check_name(name)
    if not EMAIL.fullmatch(email):
        raise InvalidInput("email is not a mail address", field="email", code="invalid_email")
    return await db_accounts.upsert(u.conn, customer, name, email, language, u.now)


async def get_account(u: Unit, customer: str) -> Account:
    u.actor.require_one_of(customer)
    return await require(u, customer)


async def put_pbx(u: Unit, customer: str, *, node: str | None = None) -> tuple[Pbx, bool]:
    """Create the account's PBX, homed on `node` (default: the policy's default node);
    for an existing PBX, another node moves it there (written and verified live on the
    new node, then removed from the old one)."""
    u.actor.require_one_of(customer)
    if node is not None and not rules.NAME.fullmatch(node):
        raise InvalidInput("node is a node name from asterisk.nodes", field="node")
    # The default node is where a PBX goes when none is named; it may be configured later.
    if node is not None and node not in {*u.policy.nodes, u.policy.default_node}:
        raise InvalidInput(
            f"no Asterisk node {node} is configured", field="node", code="unknown_node"
        )
    await require(u, customer, lock=True)
    removed = await db_accounts.get_pbx(u.conn, customer, removed=True)
    if removed is not None and removed.removed_at is not None:
        # Back on the node it was removed from (its old config there is what the
        # apply compares against); its numbers and blocks come back with it.
        if node is not None and node != removed.node:
            raise Conflict(
                f"{customer}'s removed PBX was on node {removed.node}: it comes back there",
                field="node", code="pbx_on_other_node",
            )  # fmt: skip
        revived = await db_accounts.revive_pbx(u.conn, removed.id)
        await apply_queue.request(u.conn, revived.id, "pbx created again", u.now)
        return revived, True
    pbx, created = await db_accounts.create_pbx(
        u.conn, customer, customer.lower(), node or u.policy.default_node, u.now
    )
    if pbx is None:
        raise Conflict(
            f"another account's PBX already has the config name {customer.lower()}: customer"
            " numbers that differ only in case cannot both have a cloud PBX",
            field="customer", code="pbx_name_taken",
        )  # fmt: skip
    if not created and node is not None and node != pbx.node:
        return await _move(u, pbx, node), False
    if created:
        for block in await db_blocks.of_owner(u.conn, customer):
            if await db_pbx.pbx_using(u.conn, block.id) == pbx.id:
                await apply_queue.request(u.conn, pbx.id, "pbx created", u.now)
                break
    return pbx, created


async def _move(u: Unit, pbx: Pbx, node: str) -> Pbx:
    await db_pbx.lock_pbx(u.conn, pbx.id)
    if pbx.leaving_node is not None:
        raise Conflict(
            f"the PBX is still moving from node {pbx.leaving_node} to {pbx.node}",
            field="node", code="pbx_moving",
        )  # fmt: skip
    moved = await db_accounts.move_pbx(u.conn, pbx.id, node)
    await apply_queue.request(u.conn, pbx.id, f"moved to node {node}", u.now)
    return moved


async def delete_pbx(u: Unit, customer: str) -> None:
    """Remove the account's PBX: its phones and ring groups go, and the apply takes its
    files and live objects off its node. Refused while blocks are assigned to it or
    waiting to be (reset those first): their owners' numbers must not ring nowhere."""
    u.actor.require_one_of(customer)
    await require(u, customer, lock=True)
    pbx = await db_accounts.get_pbx(u.conn, customer)
    if pbx is None:
        raise NotFound(f"account {customer} has no cloud PBX", code="pbx_not_found")
    await db_pbx.lock_pbx(u.conn, pbx.id)
    blocks = await db_accounts.targeted_by(u.conn, pbx.id)
    if blocks:
        raise Conflict(
            f"blocks {', '.join(blocks)} are assigned to this PBX or waiting to be;"
            " reset them first", code="pbx_in_use",
        )  # fmt: skip
    await db_accounts.remove_pbx(u.conn, pbx.id, u.now)
    await apply_queue.request(u.conn, pbx.id, "pbx removed", u.now)


async def get_pbx(u: Unit, customer: str) -> Pbx:
    u.actor.require_one_of(customer)
    await require(u, customer)
    pbx = await db_accounts.get_pbx(u.conn, customer)
    if pbx is None:
        raise NotFound(f"account {customer} has no cloud PBX", code="pbx_not_found")
    return pbx
