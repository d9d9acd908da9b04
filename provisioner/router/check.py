"""The router's drift check: its live table (htable.dump) against ours (router_numbers,
what Kamailio loads at start). An entry changed by hand over RPC, one lost, or one left
over is found here and, with repair, put back (set or deleted, each read back). Several
routers are each checked (and repaired) on their own; one that cannot be asked is a
finding of its own and stops no other's check."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from provisioner.db import router as db_router
from provisioner.router.rpc import Router, RouterRefused, RouterUnavailable
from provisioner.settings import Router as RouterSettings

SHOWN = 5  # keys named per kind of problem; the count says the rest


@dataclass(frozen=True)
class RouterDrift:
    wrong: dict[str, tuple[str | None, str]]  # key -> (router has, should have)
    extra: dict[str, str]  # key -> what the router has; we have no entry
    url: str = ""
    label: str = "router"  # "router", or "router <url>" when there are several
    unavailable: str | None = None  # why the router could not be asked

    @property
    def ok(self) -> bool:
        return not self.wrong and not self.extra and self.unavailable is None

    def problems(self, uri: str | None = None) -> list[str]:
        """The findings as lines; with `uri`, only those about that node's address."""
        if self.unavailable is not None:
            return [f"{self.label}: unavailable: {self.unavailable}"]
        wrong = {n: w for n, w in self.wrong.items() if uri in (None, *w)}
        extra = {n: v for n, v in self.extra.items() if uri in (None, v)}
        lines = []
        if wrong:
            named = ", ".join(
                f"{n} -> {w[0]} (not {w[1]})" for n, w in sorted(wrong.items())[:SHOWN]
            )
            lines.append(f"{self.label}: {len(wrong)} keys routed wrong: {named}")
        if extra:
            named = ", ".join(f"{n} -> {v}" for n, v in sorted(extra.items())[:SHOWN])
            lines.append(f"{self.label}: {len(extra)} keys routed that nobody uses: {named}")
        return lines


async def check_router(pool: AsyncConnectionPool, settings: RouterSettings) -> list[RouterDrift]:
    """Each router's table against ours, in the order of router.rpc_url."""
    async with pool.connection() as conn:
        ours = await db_router.table(conn)
    urls = settings.rpc_urls
    found = []
    for url in urls:
        label = "router" if len(urls) == 1 else f"router {url}"
        try:
            async with Router(url, timeout_ms=max(settings.timeout_ms, 30_000)) as r:
                live = await r.dump()
        except (RouterUnavailable, RouterRefused) as exc:
            found.append(RouterDrift({}, {}, url, label, str(exc)))
            continue
        wrong = {n: (live.get(n), uri) for n, uri in ours.items() if live.get(n) != uri}
        extra = {n: v for n, v in live.items() if n not in ours}
        found.append(RouterDrift(wrong, extra, url, label))
    return found


async def repair_router(settings: RouterSettings, drift: RouterDrift) -> int:
    """Put one router's table back to ours; returns how many entries changed."""
    if drift.unavailable is not None:
        return 0
    async with Router(drift.url, timeout_ms=settings.timeout_ms) as r:
        for number, (_, uri) in drift.wrong.items():
            await r.set(number, uri)
        for number in drift.extra:
            await r.delete(number)
    return len(drift.wrong) + len(drift.extra)
