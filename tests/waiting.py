"""Waiting in tests: for a condition, never for a fixed time.

`wait_until` polls a condition (a plain or an async callable) until it holds and returns
what it gave; past its timeout it fails, naming what did not happen. A test that must
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
    """The condition's first truthy value; AssertionError("<what>...") after `timeout`
    (`what` may be a callable, asked at that moment: the state last seen, say)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said} (not within {timeout:g} s; last: {value!r})")
        await asyncio.sleep(interval)


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
