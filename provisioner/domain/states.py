"""Assignment states and the transitions between them."""

from __future__ import annotations

PENDING, ACTIVE, RESET, EXPIRED = "pending", "active", "reset", "expired"
# A live assignment holds its block: at most one per block (a database index says so too).
LIVE = (PENDING, ACTIVE)

TRANSITIONS: dict[str, tuple[str, ...]] = {
    PENDING: (ACTIVE, RESET, EXPIRED),
    ACTIVE: (RESET,),
    RESET: (),
    EXPIRED: (),
}


class IllegalTransition(Exception):
    pass


def check_transition(old: str, new: str) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old} -> {new}")
