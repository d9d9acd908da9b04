"""The unit of work a use case runs in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from provisioner.db import Conn
from provisioner.domain.credentials import SecretBox
from provisioner.domain.errors import Forbidden
from provisioner.mail.compose import Composer
from provisioner.settings import Settings


@dataclass(frozen=True)
class Actor:
    """Who causes a change: an API key (maybe acting for a customer), or a confirm link."""

    name: str
    acting_customer: str | None = None
    request_id: str | None = None

    def acts_for(self, *customers: str) -> bool:
        """True unless the portal said it acts for someone who is none of these."""
        return self.acting_customer is None or self.acting_customer in customers

    def require_one_of(self, *customers: str) -> None:
        """The portal said whom it acts for: refuse if that is none of these accounts."""
        if self.acting_customer is not None and self.acting_customer not in customers:
            raise Forbidden(
                f"customer {self.acting_customer} may not act on this resource",
                code="acting_customer_forbidden",
            )


@dataclass(frozen=True)
class Policy:
    """The operator's rules a use case follows, from the settings."""

    confirm_within_days: int
    country: str
    public_base_url: str
    sip_realm: str = "provisioner"
    secrets: SecretBox = field(default_factory=SecretBox)
    nodes: tuple[str, ...] = ()  # the Asterisk nodes configured, by name
    default_node: str = "default"  # where a new PBX goes when its PUT names no node
    phone_domain: str = ""  # a PBX's SIP domain is <slug>.<this>; empty: no phone routing

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            confirm_within_days=settings.assignment.confirm_within_days,
            country=settings.numbering.country,
            public_base_url=settings.public_base_url,
            sip_realm=settings.asterisk.sip_realm,
            secrets=settings.secret_box(),
            nodes=tuple(n.name for n in settings.asterisk.nodes),
            default_node=settings.asterisk.default_node,
            phone_domain=settings.router.phone_domain,
        )


@dataclass(frozen=True)
class Unit:
    conn: Conn
    now: datetime
    actor: Actor
    policy: Policy
    mail: Composer
