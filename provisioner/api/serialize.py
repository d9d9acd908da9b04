"""The API's JSON shapes, one function per resource (the OpenAPI document mirrors these)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from provisioner.db.accounts import Account, Pbx
from provisioner.db.assignments import Assignment, Event
from provisioner.db.blocks import BlockRow
from provisioner.domain.numbers import describe


def when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def account(a: Account) -> dict[str, Any]:
    return {
        "customer": a.customer,
        "name": a.name,
        "email": a.email,
        "language": a.language,
        "created_at": when(a.created_at),
        "updated_at": when(a.updated_at),
    }


def pbx(p: Pbx) -> dict[str, Any]:
    return {"customer": p.customer, "slug": p.slug, "created_at": when(p.created_at)}


def block(b: BlockRow, used_by: str | None) -> dict[str, Any]:
    numbers = b.block
    return {
        "id": b.id,
        "owner": b.owner,
        "number": b.base_number,
        "range": numbers.range_text,
        "mode": b.mode,
        "display": describe(numbers),
        "area_code": b.area_code,
        "first_number": numbers.first_number(),
        "last_number": numbers.last_number(),
        "number_count": numbers.size(),
        "used_by_pbx": used_by,
        "created_at": when(b.created_at),
        "updated_at": when(b.updated_at),
    }


def assignment(a: Assignment) -> dict[str, Any]:
    return {
        "id": str(a.id),
        "block_id": a.block_id,
        "owner": a.owner,
        "target_customer": a.target,
        "state": a.state,
        "owner_confirmed": a.owner_confirmed_at is not None,
        "target_confirmed": a.target_confirmed_at is not None,
        "owner_confirmed_at": when(a.owner_confirmed_at),
        "target_confirmed_at": when(a.target_confirmed_at),
        "created_at": when(a.created_at),
        "expires_at": when(a.expires_at),
        "activated_at": when(a.activated_at),
        "ended_at": when(a.ended_at),
    }


def event(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": when(e.at),
        "action": e.action,
        "old_state": e.old_state,
        "new_state": e.new_state,
        "actor": e.actor,
        "acting_customer": e.acting_customer,
        "request_id": e.request_id,
    }
