"""The API's JSON shapes, one function per resource (the OpenAPI document mirrors these)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from provisioner.apply.check import PbxDrift, node_clean
from provisioner.db.accounts import Account, Pbx
from provisioner.db.assignments import Assignment, Event
from provisioner.db.blocks import BlockRow
from provisioner.db.calls import Call, UsageRow
from provisioner.db.pbx import Extension, RingGroup
from provisioner.domain import names
from provisioner.domain.numbers import describe
from provisioner.render.view import PbxView
from provisioner.service.config import ConfigStatus
from provisioner.service.usage import Period


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


def pbx(p: Pbx, phone_domain: str = "") -> dict[str, Any]:
    return {
        "customer": p.customer,
        "slug": p.slug,
        # What its phones register with at the SIP router (router.phone_domain).
        "sip_domain": f"{p.slug}.{phone_domain}" if phone_domain else None,
        "node": p.node,
        "moving_from": p.leaving_node,
        "created_at": when(p.created_at),
    }


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


def extension(e: Extension, view: PbxView) -> dict[str, Any]:
    """An extension, with what it falls back to when its site block left the PBX."""
    phone = next((p for p in view.phones if p.ext == e.ext), None)
    live_did = phone is not None and phone.out_number == e.did and e.did is not None
    return {
        "ext": e.ext,
        "name": e.name,
        "site_block": e.site_block,
        "did": e.did,
        "pickup_group": e.pickup_group,
        "sip_username": names.phone(view.slug, e.ext),
        "effective_site_block": names.site_block(view.slug, phone.site_context) if phone else None,
        "effective_caller_id": phone.out_number if phone else None,
        "did_active": live_did,
        "fallback": phone.fallback if phone else False,
        "created_at": when(e.created_at),
        "updated_at": when(e.updated_at),
    }


def ring_group(g: RingGroup) -> dict[str, Any]:
    return {
        "ext": g.ext,
        "name": g.name,
        "strategy": g.strategy,
        "members": list(g.members),
        "ring_seconds": g.ring_seconds,
        "created_at": when(g.created_at),
        "updated_at": when(g.updated_at),
    }


# Where a reason names a part of the platform: a socket address as Python writes it, a
# URL, an IP address (v4 or v6, with a port or not), a host with a port.
_ADDRESS = re.compile(
    r"\('[^']*', \d+(?:, \d+)*\)"  # Python's socket address: ('127.0.0.1', 5038)
    r"|[a-z][a-z0-9+.-]*://[^\s,;)]+"
    r"|\[[0-9A-Fa-f:.]+\](?::\d+)?"
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"
    r"|\b[A-Za-z0-9.-]+:\d{2,5}\b"
)


def without_addresses(reason: str | None) -> str | None:
    """A reason as a customer may read it: the platform's addresses left out."""
    return None if reason is None else _ADDRESS.sub("(internal address)", reason)


def config(c: ConfigStatus, *, internal: bool) -> dict[str, Any]:
    """`internal`: with the reasons as recorded (engineers); else without addresses."""

    def shown(reason: str | None) -> str | None:
        return reason if internal else without_addresses(reason)

    return {
        "customer": c.customer,
        "node": c.node,
        "revision": c.revision.revision if c.revision else None,
        "sha256": c.revision.sha256 if c.revision else None,
        "files": c.revision.files if c.revision else {},
        "apply_state": c.state.state if c.state else "pending",
        "applied_revision": c.state.good_revision if c.state else None,
        "apply_error": shown(c.state.error) if c.state else None,
        "apply_updated_at": when(c.state.updated_at) if c.state else None,
        "live": {
            "dialplan": c.state.dialplan_revision if c.state else None,
            "pjsip": c.state.pjsip_revision if c.state else None,
            "router": c.state.router if c.state else None,
            "router_error": shown(c.state.router_error) if c.state else None,
        },
    }


def node_check(node: str, pbxes: list[PbxDrift], problems: list[str]) -> dict[str, Any]:
    return {
        "node": node,
        "ok": node_clean(pbxes, problems),
        "problems": problems,
        "pbxes": [
            {
                "customer": d.customer,
                "slug": d.slug,
                "status": d.status,
                "files": d.files,
                "live": d.live,
            }
            for d in pbxes
        ],
    }


USAGE_FIELDS = ("block_id", "owner", "pbx", "direction", "calls", "answered", "billsec")
CALL_FIELDS = (
    "uniqueid", "linkedid", "sequence", "started_at", "answered_at", "ended_at",
    "duration", "billsec", "disposition", "direction", "number", "peer", "owner", "pbx",
    "block_id",
)  # fmt: skip


def usage_row(r: UsageRow) -> dict[str, Any]:
    return {name: getattr(r, name) for name in USAGE_FIELDS}


def usage(customer: str, period: Period, rows: list[UsageRow]) -> dict[str, Any]:
    return {
        "customer": customer,
        "from": when(period.start),
        "to": when(period.end),
        "usage": [usage_row(r) for r in rows],
        "total": {
            "calls": sum(r.calls for r in rows),
            "answered": sum(r.answered for r in rows),
            "billsec": sum(r.billsec for r in rows),
        },
    }


def call(c: Call, *, internal: bool) -> dict[str, Any]:
    """`internal`: with the node it was on (engineers)."""
    shown = {
        name: when(value) if isinstance(value := getattr(c, name), datetime) else value
        for name in CALL_FIELDS
    }
    return {**shown, "node": c.node} if internal else shown
