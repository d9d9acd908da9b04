"""The apply queue: which PBXs need their Asterisk config regenerated and applied."""

from __future__ import annotations

from datetime import datetime

from provisioner.db import Conn

CHANNEL = "apply_queue"


async def request(
    conn: Conn, pbx_id: int, reason: str, now: datetime, *, full_reload: bool = False
) -> None:
    """Ask for an apply of this PBX; coalesces with one already waiting. `full_reload`:
    by a full round (its incremental change did not show up live)."""
    await conn.execute(
        "INSERT INTO apply_queue (pbx_id, reason, requested_at, next_attempt_at, full_reload)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (pbx_id) DO UPDATE SET generation = apply_queue.generation + 1,"
        " reason = EXCLUDED.reason, requested_at = EXCLUDED.requested_at,"
        " next_attempt_at = LEAST(apply_queue.next_attempt_at, EXCLUDED.next_attempt_at),"
        " full_reload = apply_queue.full_reload OR EXCLUDED.full_reload",
        (pbx_id, reason[:1000], now, now, full_reload),
    )
    await conn.execute(f"NOTIFY {CHANNEL}")
