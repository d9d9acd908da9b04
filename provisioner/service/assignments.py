"""The two-party assignment flow: request, confirm by both sides, activate, reset, expire.

State machine (domain.states): pending -> active -> reset, pending -> reset,
pending -> expired. Every change locks the assignment row first, so two confirmations,
or a confirmation and a reset, arriving together serialize and see each other.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta

from provisioner.db import accounts as db_accounts
from provisioner.db import apply_queue, outbox
from provisioner.db import assignments as db_assignments
from provisioner.db import events as event_feed
from provisioner.db import pbx as db_pbx
from provisioner.db.accounts import Account
from provisioner.db.assignments import Assignment, Event
from provisioner.db.blocks import BlockRow
from provisioner.domain import states
from provisioner.domain.errors import Conflict, InvalidInput, NotFound
from provisioner.domain.events import AssignmentChange
from provisioner.domain.numbers import describe
from provisioner.mail.compose import MailView
from provisioner.service import accounts, blocks
from provisioner.service.unit import Actor, Unit

OWNER, TARGET = "owner", "target"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    # 256 random bits, URL-safe; only the hash is stored.
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ConfirmView:
    """What the confirm page shows for one token."""

    assignment: Assignment
    side: str
    block: BlockRow
    owner: Account
    target: Account
    just_confirmed: bool = False

    @property
    def side_confirmed(self) -> bool:
        if self.side == OWNER:
            return self.assignment.owner_confirmed_at is not None
        return self.assignment.target_confirmed_at is not None

    @property
    def block_text(self) -> str:
        return describe(self.block.block)

    @property
    def recipient(self) -> Account:
        return self.owner if self.side == OWNER else self.target


async def create(u: Unit, block_id: str, target_customer: str) -> Assignment:
    """Ask to assign the block to the target's PBX; mail both sides their confirm link."""
    block = await blocks.require(u, block_id, lock=True, owner_only=True)
    accounts.check_customer(target_customer, field="target_customer")
    if block.mode != "pbx":
        raise Conflict(
            f"block {block_id} is in standard mode; switch it to pbx mode first",
            field="block_id",
            code="block_not_pbx_mode",
        )
    if target_customer == block.owner:
        raise InvalidInput(
            "a block is used by its owner's own PBX without an assignment",
            field="target_customer",
            code="target_is_owner",
        )
    target = await db_accounts.get(u.conn, target_customer)
    if target is None:
        raise InvalidInput(
            f"no account {target_customer}", field="target_customer", code="target_not_found"
        )
    pbx = await db_accounts.get_pbx(u.conn, target_customer)
    if pbx is None:
        raise Conflict(
            f"account {target_customer} has no cloud PBX",
            field="target_customer",
            code="target_has_no_pbx",
        )
    live = await db_assignments.live_for_block(u.conn, block_id, lock=True)
    if live is not None:
        live = await _expire_if_due(u, live)
    if live is not None and live.state in states.LIVE:
        raise Conflict(
            f"block {block_id} already has a {live.state} assignment ({live.id}); reset it first",
            field="block_id",
            code="assignment_exists",
        )
    owner_token, target_token = new_token(), new_token()
    try:
        assignment = await db_assignments.insert(
            u.conn,
            block_id=block_id,
            owner=block.owner,
            target=target_customer,
            target_pbx_id=pbx.id,
            owner_token_hash=token_hash(owner_token),
            target_token_hash=token_hash(target_token),
            now=u.now,
            expires_at=u.now + timedelta(days=u.policy.confirm_within_days),
        )
    except db_assignments.AlreadyLive:
        raise Conflict(
            f"block {block_id} already has a live assignment",
            field="block_id",
            code="assignment_exists",
        ) from None
    await _event(u, assignment, "created", None, u.actor)
    owner = await accounts.require(u, block.owner)
    for side, account, token in ((OWNER, owner, owner_token), (TARGET, target, target_token)):
        url = f"{u.policy.public_base_url}/confirm/{token}"
        await _mail(u, "confirm_request", account, side, assignment, block, owner, target, url)
    return assignment


async def current(u: Unit, block_id: str) -> Assignment:
    """The block's live assignment, else its last one: what the portal shows."""
    block = await blocks.require(u, block_id)
    live = await db_assignments.live_for_block(u.conn, block_id, lock=True)
    if live is not None:
        await _expire_if_due(u, live)
    assignment = await db_assignments.latest_for_block(u.conn, block_id)
    # Parties first: a non-party hears "no block" whether or not there is one.
    if not u.actor.acts_for(block.owner, *([assignment.target] if assignment else [])):
        raise blocks.no_block(block_id)
    if assignment is None:
        raise NotFound(f"block {block_id} has never been assigned", code="assignment_not_found")
    return assignment


async def reset(u: Unit, block_id: str) -> Assignment:
    """Cancel the live assignment, pending or active. Either side may do it."""
    block = await blocks.require(u, block_id, lock=True)
    live = await db_assignments.live_for_block(u.conn, block_id, lock=True)
    if live is not None:
        live = await _expire_if_due(u, live)
    if not u.actor.acts_for(block.owner, *([live.target] if live else [])):
        raise blocks.no_block(block_id)
    if live is None or live.state not in states.LIVE:
        raise NotFound(
            f"block {block_id} has no pending or active assignment", code="assignment_not_found"
        )
    was_active = live.state == states.ACTIVE
    updated = await _transition(u, live, states.RESET, "reset", u.actor)
    if was_active:
        await _request_applies(u, block, live, "assignment reset")
    await _notify_both(u, "reset", updated, block)
    return updated


async def events(u: Unit, assignment_id: str) -> list[Event]:
    try:
        key = uuid.UUID(assignment_id)
    except ValueError:
        raise NotFound(f"no assignment {assignment_id}", code="assignment_not_found") from None
    assignment = await db_assignments.get(u.conn, key)
    if assignment is None or not u.actor.acts_for(assignment.owner, assignment.target):
        raise NotFound(f"no assignment {assignment_id}", code="assignment_not_found")
    return await db_assignments.events(u.conn, key)


async def look_up_token(u: Unit, token: str) -> ConfirmView:
    """What a confirm link is about, without confirming anything (GET is safe)."""
    assignment = await _by_token(u, token)
    assignment = await _expire_if_due(u, assignment)
    return await _view(u, assignment, _side(assignment, token))


async def confirm(u: Unit, token: str) -> ConfirmView:
    """Confirm the link's side. Confirming again changes nothing and shows the state."""
    assignment = await _by_token(u, token)
    # Lock the block first, as reset and create do, so no two paths lock in other orders.
    block = await blocks.require(u, assignment.block_id, lock=True)
    locked = await db_assignments.get(u.conn, assignment.id, lock=True)
    assert locked is not None
    assignment = await _expire_if_due(u, locked)
    side = _side(assignment, token)
    if assignment.state != states.PENDING:
        return await _view(u, assignment, side)
    already = assignment.owner_confirmed_at if side == OWNER else assignment.target_confirmed_at
    if already is not None:
        return await _view(u, assignment, side)
    owner, target = await _parties(u, assignment)
    actor = Actor(
        name=f"confirm-link:{side}",
        acting_customer=owner.customer if side == OWNER else target.customer,
        request_id=u.actor.request_id,
    )
    if side == OWNER:
        changed = replace(assignment, owner_confirmed_at=u.now)
    else:
        changed = replace(assignment, target_confirmed_at=u.now)
    both = changed.owner_confirmed_at is not None and changed.target_confirmed_at is not None
    if both:
        states.check_transition(assignment.state, states.ACTIVE)
        changed = replace(changed, state=states.ACTIVE, activated_at=u.now)
    updated = await db_assignments.update(u.conn, changed)
    await _event(u, updated, f"{side}_confirmed", assignment.state, actor)
    if both:
        await _check_default_target(u, updated)
        await _request_applies(u, block, updated, "assignment activated")
        await _notify_both(u, "activated", updated, block)
    return replace(await _view(u, updated, side), just_confirmed=True)


async def expire_due(u: Unit, limit: int = 100) -> int:
    """Expire pending assignments past their window; returns how many."""
    count = 0
    for assignment_id in await db_assignments.due_for_expiry(u.conn, u.now, limit):
        assignment = await db_assignments.get(u.conn, assignment_id)
        assert assignment is not None
        await _expire_if_due(u, assignment)
        count += 1
    return count


async def _expire_if_due(u: Unit, assignment: Assignment) -> Assignment:
    if assignment.state != states.PENDING or u.now < assignment.expires_at:
        return assignment
    # Re-read under lock: a confirmation may have landed since the caller read the row.
    locked = await db_assignments.get(u.conn, assignment.id, lock=True)
    assert locked is not None
    if locked.state != states.PENDING:
        return locked
    updated = await _transition(u, locked, states.EXPIRED, "expired", Actor("system"))
    block = await blocks.require(u, assignment.block_id)
    await _notify_both(u, "expired", updated, block)
    return updated


async def _transition(
    u: Unit, assignment: Assignment, new_state: str, action: str, actor: Actor
) -> Assignment:
    states.check_transition(assignment.state, new_state)
    changed = replace(assignment, state=new_state, ended_at=u.now)
    updated = await db_assignments.update(u.conn, changed)
    # The target's PBX no longer uses the block: its choice of a default target goes
    # (once the SIP router no longer sends the numbers to it).
    await db_pbx.end_default_target(u.conn, assignment.target_pbx_id, assignment.block_id, u.now)
    await _event(u, updated, action, assignment.state, actor)
    return updated


async def _event(
    u: Unit, assignment: Assignment, action: str, old_state: str | None, actor: Actor
) -> None:
    """The audit trail's entry, and the same change in the event feed (webhooks)."""
    change = AssignmentChange(
        assignment_id=str(assignment.id), block_id=assignment.block_id,
        owner=assignment.owner, target=assignment.target,
        state=assignment.state, old_state=old_state,
    )  # fmt: skip
    await event_feed.emit(u.conn, f"assignment.{action}", change, u.now)
    if assignment.state == states.ACTIVE and old_state != states.ACTIVE:
        await event_feed.emit(u.conn, "assignment.activated", change, u.now)
    await db_assignments.add_event(
        u.conn,
        assignment.id,
        at=u.now,
        action=action,
        old_state=old_state,
        new_state=assignment.state,
        actor=actor.name,
        acting_customer=actor.acting_customer,
        request_id=u.actor.request_id,
    )


async def _check_default_target(u: Unit, assignment: Assignment) -> None:
    """As the block goes live in the target's PBX, the default target the target chose
    must still be one of its extensions or ring groups. Deleting one that is named is
    refused, so this holds; it is checked here too so that no call can ring nowhere."""
    await db_pbx.drop_default_target_ringing_nothing(
        u.conn, assignment.target_pbx_id, assignment.block_id
    )


async def _request_applies(u: Unit, block: BlockRow, assignment: Assignment, why: str) -> None:
    """The target PBX gains or loses the block; the owner's own PBX, if any, the reverse."""
    reason = f"{why}: block {block.id}"
    pbx_ids = {assignment.target_pbx_id}
    own = await db_accounts.get_pbx(u.conn, block.owner)
    if own is not None and block.mode == "pbx":
        pbx_ids.add(own.id)
    for pbx_id in sorted(pbx_ids):  # the lock order of db/__init__.py
        await apply_queue.request(u.conn, pbx_id, reason, u.now)


async def _by_token(u: Unit, token: str) -> Assignment:
    # Tokens are 43 URL-safe characters; anything else cannot be one of ours.
    if len(token) > 100:
        raise NotFound("unknown confirmation link", code="token_not_found")
    assignment = await db_assignments.by_token_hash(u.conn, token_hash(token))
    if assignment is None:
        raise NotFound("unknown confirmation link", code="token_not_found")
    return assignment


def _side(assignment: Assignment, token: str) -> str:
    return (
        OWNER if secrets.compare_digest(assignment.owner_token_hash, token_hash(token)) else TARGET
    )


async def _parties(u: Unit, assignment: Assignment) -> tuple[Account, Account]:
    owner = await accounts.require(u, assignment.owner)
    target = await accounts.require(u, assignment.target)
    return owner, target


async def _view(u: Unit, assignment: Assignment, side: str) -> ConfirmView:
    owner, target = await _parties(u, assignment)
    block = await blocks.require(u, assignment.block_id)
    return ConfirmView(assignment, side, block, owner, target)


async def _notify_both(u: Unit, kind: str, assignment: Assignment, block: BlockRow) -> None:
    owner, target = await _parties(u, assignment)
    for side, account in ((OWNER, owner), (TARGET, target)):
        await _mail(u, kind, account, side, assignment, block, owner, target, None)


async def _mail(
    u: Unit,
    kind: str,
    to: Account,
    side: str,
    assignment: Assignment,
    block: BlockRow,
    owner: Account,
    target: Account,
    confirm_url: str | None,
) -> None:
    numbers = block.block.numbers()
    view = MailView(
        recipient_name=to.name,
        side=side,
        block_id=block.id,
        block_text=describe(block.block),
        first_number=numbers[0],
        last_number=numbers[-1],
        number_count=len(numbers),
        owner_name=owner.name,
        owner_customer=owner.customer,
        target_name=target.name,
        target_customer=target.customer,
        expires_at=assignment.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        confirm_url=confirm_url,
    )
    mail = u.mail.compose(kind, to.language, view)
    await outbox.enqueue(
        u.conn,
        message_id=f"<{kind}.{assignment.id}.{side}@provisioner>",
        recipient=to.email,
        subject=mail.subject,
        body=mail.body,
        now=u.now,
    )
