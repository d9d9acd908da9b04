"""The unit of work a use case runs in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from provisioner.db import Conn
from provisioner.domain.errors import Forbidden
from provisioner.mail.compose import Composer


@dataclass(frozen=True)
class Actor:
    """Who causes a change: an API key (maybe acting for a customer), or a confirm link."""

    name: str
    acting_customer: str | None = None
    request_id: str | None = None

    def require_one_of(self, *customers: str) -> None:
        """The portal said whom it acts for: refuse if that is none of these accounts."""
        if self.acting_customer is not None and self.acting_customer not in customers:
            raise Forbidden(
                f"customer {self.acting_customer} may not act on this resource",
                code="acting_customer_forbidden",
            )


@dataclass(frozen=True)
class Policy:
    confirm_within_days: int
    country: str
    public_base_url: str


@dataclass(frozen=True)
class Unit:
    conn: Conn
    now: datetime
    actor: Actor
    policy: Policy
    mail: Composer
