"""The event types of the feed (GET /v1/events, webhooks), each with its payload, declared
once: the emitters build these payloads, and the OpenAPI document (FeedEvent's `type`
enum and its `data` schemas) and the README are tested against this module."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class AssignmentChange:
    """An assignment's state changed (the audit trail has the same step)."""

    assignment_id: str
    block_id: str
    owner: str
    target: str
    state: str
    old_state: str | None


@dataclass(frozen=True, kw_only=True)
class ApplyOutcome:
    """A PBX's config is live in both parts (applied, with the revision), or failed."""

    customer: str
    node: str
    revision: int | None
    removed: bool
    error: str | None


@dataclass(frozen=True, kw_only=True)
class RouterOutcome:
    """The SIP router sends these blocks' numbers to the PBX's node now (routed), or
    cannot yet (pending, with the reason; retried)."""

    customer: str
    node: str
    blocks: list[str]
    error: str | None


@dataclass(frozen=True, kw_only=True)
class CallEnded:
    """A call record imported from a node (with billing.call_events): who is billed
    (owner), which PBX used the block, how long it was answered."""

    node: str
    uniqueid: str
    linkedid: str
    started_at: str
    answered_at: str | None
    ended_at: str
    duration: int
    billsec: int
    disposition: str
    direction: str
    number: str | None
    peer: str | None
    owner: str | None
    pbx: str | None
    block_id: str | None


@dataclass(frozen=True, kw_only=True)
class NodeHealth:
    """The SIP router marks a node down (its OPTIONS probes go unanswered: calls for it
    are refused at once) or up again; `since` is when this service saw the change."""

    node: str
    sip_uri: str
    up: bool
    since: str


@dataclass(frozen=True, kw_only=True)
class NodeFailover:
    """A node was down for longer than asterisk.failover_seconds: its PBXs (by customer)
    now have their home on its standby, where they go live and the router follows."""

    node: str
    standby: str
    customers: list[str]
    down_since: str


Payload = AssignmentChange | ApplyOutcome | RouterOutcome | CallEnded | NodeHealth | NodeFailover

# Every event type, with the payload it carries.
TYPES: dict[str, type[Payload]] = {
    "assignment.created": AssignmentChange,
    "assignment.owner_confirmed": AssignmentChange,
    "assignment.target_confirmed": AssignmentChange,
    "assignment.activated": AssignmentChange,
    "assignment.reset": AssignmentChange,
    "assignment.expired": AssignmentChange,
    "apply.applied": ApplyOutcome,
    "apply.failed": ApplyOutcome,
    "router.routed": RouterOutcome,
    "router.pending": RouterOutcome,
    "call.ended": CallEnded,
    "node.down": NodeHealth,
    "node.up": NodeHealth,
    "node.failover": NodeFailover,
}


def data_of(type_: str, payload: Payload) -> dict[str, Any]:
    """The event's `data`, checked against its declaration (a type nobody declared, or
    the wrong payload for it, is a bug of ours: it raises)."""
    declared = TYPES.get(type_)
    if declared is None or not isinstance(payload, declared):
        raise TypeError(f"event {type_} does not carry {type(payload).__name__}")
    return asdict(payload)
