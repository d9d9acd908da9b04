"""Waiting in tests: for a condition, never for a fixed time.

`wait_for` polls a probe (a plain or an async callable) until its value holds and
returns that value; past its timeout it fails, naming what did not happen and the value
last seen. `wait_until` is the same for a condition that is its own test. A test that must
show that something does NOT happen (no second mail, no duplicate event) first waits for
what proves the work is over (`mail_settled`: no mail left that could still be sent),
then looks: a sleep there would pass whenever the duplicate came a little later."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import psycopg

T = TypeVar("T")


@overload
async def wait_for(
    probe: Callable[[], Awaitable[T]],
    holds: Callable[[T], bool],
    what: str | Callable[[], str],
    timeout: float = ...,
    interval: float = ...,
    shown: Callable[[T], str] = ...,
) -> T: ...
@overload
async def wait_for(
    probe: Callable[[], T],
    holds: Callable[[T], bool],
    what: str | Callable[[], str],
    timeout: float = ...,
    interval: float = ...,
    shown: Callable[[T], str] = ...,
) -> T: ...
async def wait_for(
    probe: Callable[[], Any],
    holds: Callable[[Any], bool],
    what: str | Callable[[], str],
    timeout: float = 10.0,
    interval: float = 0.02,
    shown: Callable[[Any], str] = repr,
) -> Any:
    """The probe's first value that `holds`; AssertionError("<what>...") after `timeout`,
    naming the value last seen (`shown`: how to show it, as a SIP exchange's evidence)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if holds(value):
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said} (not within {timeout:g} s; last: {shown(value)})")
        await asyncio.sleep(interval)


@overload
async def wait_until(
    condition: Callable[[], Awaitable[T | None]],
    what: str | Callable[[], str],
    timeout: float = ...,
    interval: float = ...,
) -> T: ...
@overload
async def wait_until(
    condition: Callable[[], T | None],
    what: str | Callable[[], str],
    timeout: float = ...,
    interval: float = ...,
) -> T: ...
async def wait_until(
    condition: Callable[[], Any],
    what: str | Callable[[], str],
    timeout: float = 10.0,
    interval: float = 0.02,
) -> Any:
    """The condition's first truthy value (`wait_for` with truth as the test; `what`
    may be a callable, asked at the moment it fails)."""
    return await wait_for(condition, bool, what, timeout, interval)


def wait_until_sync(
    condition: Callable[[], T | None], what: str, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """wait_until for code that runs outside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (not within {timeout:g} s; last: {value!r})")
        time.sleep(interval)


async def mail_settled(db_url: str, timeout: float = 20.0) -> None:
    """Every mail of the outbox is sent: none is left that could still arrive. A mail is
    marked sent only after the SMTP server took it, so whatever the inbox will ever get
    from the rows there now, it has."""

    def unsent() -> int:
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL").fetchone()
        return int(row[0]) if row else 0

    await wait_until(lambda: unsent() == 0, "mails left unsent in the outbox", timeout)
