"""The event feed as the portal pulls it (GET /v1/events): the operator's whole feed,
so not for a request acting for one customer."""

from __future__ import annotations

from provisioner.db import events as db_events
from provisioner.db.events import Event
from provisioner.domain.errors import Forbidden
from provisioner.service.unit import Unit


async def feed(u: Unit, after: int, limit: int) -> list[Event]:
    if u.actor.acting_customer is not None:
        raise Forbidden(
            "the event feed covers every customer: call it as the portal itself",
            code="operator_only",
        )
    return await db_events.after(u.conn, after, limit)
