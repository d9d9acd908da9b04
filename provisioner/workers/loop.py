"""A worker loop: do work while there is some, then sleep until NOTIFY or a timeout.

NOTIFY only shortens the wait; the periodic poll is what guarantees progress, so a
lost notification or a database restart delays work and never drops it.

A worker told to stop finishes the step in hand first (at most STOP_GRACE seconds): an
SMTP conversation cut in half could have the mail accepted and not marked sent (sent
again later), and leaves its socket to the garbage collector; an apply round cut in half
leaves its jobs to the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import psycopg

from provisioner.db import channels

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[int]]
STOP_GRACE = 5.0


def _reraise_if_cancelling() -> None:
    """psycopg may turn a cancellation into its own error; shutdown must still win."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _listen(url: str, channel: str, wake: asyncio.Event) -> None:
    retry = 1.0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await channels.listen(conn, channel)
                retry = 1.0
                wake.set()  # anything notified while we were away is found by this pass
                async for _ in conn.notifies():
                    wake.set()
        except psycopg.Error as exc:
            _reraise_if_cancelling()
            log.warning("listener on %s lost (%s); reconnecting in %.0f s", channel, exc, retry)
        await asyncio.sleep(retry)
        retry = min(retry * 2, 30.0)


async def _finish(step: Step) -> int:
    """One step, run to its end even when the worker is cancelled meanwhile (up to
    STOP_GRACE seconds, then it is cancelled too); the cancellation is raised after."""
    task = asyncio.ensure_future(step())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        _done, pending = await asyncio.wait({task}, timeout=STOP_GRACE)
        for late in pending:
            late.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise


async def run(
    name: str,
    step: Step,
    *,
    idle_seconds: float,
    url: str | None = None,
    channel: str | None = None,
) -> None:
    """Run `step` until it reports no work, then wait; forever, until cancelled."""
    wake = asyncio.Event()
    listener = (
        asyncio.create_task(_listen(url, channel, wake), name=f"{name}-listen")
        if url and channel
        else None
    )
    failures = 0
    try:
        while True:
            wake.clear()
            try:
                while await _finish(step) > 0:
                    _reraise_if_cancelling()
                _reraise_if_cancelling()
                failures = 0
            except (psycopg.Error, OSError) as exc:
                _reraise_if_cancelling()
                failures += 1
                delay = min(2.0**failures, 30.0)
                log.warning("%s: %s; retrying in %.0f s", name, exc, delay)
                await asyncio.sleep(delay)
                continue
            except Exception:
                _reraise_if_cancelling()
                log.exception("%s: unexpected error; retrying in 30 s", name)
                await asyncio.sleep(30)
                continue
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives together with the wake-up, and shutdown would then hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_seconds):
                    await wake.wait()
            _reraise_if_cancelling()
    finally:
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
