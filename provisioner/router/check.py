"""The router's drift check: its live table (htable.dump) against ours (router_numbers,
what Kamailio loads at start). An entry changed by hand over RPC, one lost, or one left
over is found here and, with repair, put back (set or deleted, each read back)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from provisioner.db import router as db_router
from provisioner.router.rpc import Router
from provisioner.settings import Router as RouterSettings

SHOWN = 5  # keys named per kind of problem; the count says the rest


@dataclass(frozen=True)
class RouterDrift:
    wrong: dict[str, tuple[str | None, str]]  # key -> (router has, should have)
    extra: dict[str, str]  # key -> what the router has; we have no entry

    @property
    def ok(self) -> bool:
        return not self.wrong and not self.extra

    def problems(self, uri: str | None = None) -> list[str]:
        """The findings as lines; with `uri`, only those about that node's address."""
        wrong = {n: w for n, w in self.wrong.items() if uri in (None, *w)}
        extra = {n: v for n, v in self.extra.items() if uri in (None, v)}
        lines = []
        if wrong:
            named = ", ".join(
                f"{n} -> {w[0]} (not {w[1]})" for n, w in sorted(wrong.items())[:SHOWN]
            )
            lines.append(f"router: {len(wrong)} keys routed wrong: {named}")
        if extra:
            named = ", ".join(f"{n} -> {v}" for n, v in sorted(extra.items())[:SHOWN])
            lines.append(f"router: {len(extra)} keys routed that nobody uses: {named}")
        return lines


async def check_router(pool: AsyncConnectionPool, settings: RouterSettings) -> RouterDrift:
    async with pool.connection() as conn:
        ours = await db_router.table(conn)
    async with Router(settings.rpc_url, timeout_ms=max(settings.timeout_ms, 30_000)) as r:
        live = await r.dump()
    wrong = {n: (live.get(n), uri) for n, uri in ours.items() if live.get(n) != uri}
    extra = {n: v for n, v in live.items() if n not in ours}
    return RouterDrift(wrong, extra)


async def repair_router(settings: RouterSettings, drift: RouterDrift) -> int:
    """Put the router's table back to ours; returns how many entries changed."""
    async with Router(settings.rpc_url, timeout_ms=settings.timeout_ms) as r:
        for number, (_, uri) in drift.wrong.items():
            await r.set(number, uri)
        for number in drift.extra:
            await r.delete(number)
    return len(drift.wrong) + len(drift.extra)
