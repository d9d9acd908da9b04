"""What a country's phones dial besides other numbers: its country code, its emergency
numbers (from libphonenumber's short-number data) and the other short service numbers
that must reach the carrier as dialed and can never be extensions.

Only the countries listed in SERVICES are offered: adding one means knowing its
non-emergency short numbers, which no library lists reliably for dialling plans.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import phonenumbers

# Per country: dialplan patterns of short service numbers dialed as they are, and what
# an extension may not be because of them (a prefix of a longer number counts too).
SERVICES: dict[str, tuple[tuple[str, ...], str]] = {
    # 115 authorities, 116xxx EU harmonised services, 118xx directories
    "DE": (("115", "_116XXX", "_118XX."), r"115|116\d*|118\d*"),
    # 116xxx EU harmonised services, 118xxx directories, 141 on-call doctors,
    # 1450 health advice
    "AT": (("141", "1450", "_116XXX", "_118XXX"), r"141|1450|116\d*|118\d*"),
}
COUNTRIES = tuple(SERVICES)


@dataclass(frozen=True)
class Plan:
    country: str  # ISO 3166 alpha-2
    country_code: str  # "49"
    emergency: tuple[str, ...]  # "110", "112"
    services: tuple[str, ...]  # dialplan patterns
    reserved: re.Pattern[str]  # extensions that cannot be

    def is_reserved(self, ext: str) -> bool:
        return ext in self.emergency or self.reserved.fullmatch(ext) is not None

    @property
    def described(self) -> str:
        """For people: '110, 112, 115, 116xxx, 118xx...'."""
        shown = [s.lstrip("_").replace("X", "x").replace(".", "...") for s in self.services]
        return ", ".join([*self.emergency, *shown])


@cache
def plan(country: str) -> Plan:
    if country not in SERVICES:
        raise ValueError(f"no numbering plan for {country!r} (known: {', '.join(COUNTRIES)})")
    services, reserved = SERVICES[country]
    emergency = tuple(
        str(n) for n in range(100, 1000) if phonenumbers.is_emergency_number(str(n), country)
    )
    return Plan(
        country=country,
        country_code=str(phonenumbers.country_code_for_region(country)),
        emergency=emergency,
        services=services,
        reserved=re.compile(reserved),
    )


def plan_for_code(country_code: int) -> Plan:
    """The plan of the country a block's numbers belong to."""
    return plan(phonenumbers.region_code_for_country_code(country_code))
