"""Node health as the SIP router sees it. Kamailio's dispatcher module probes every node
with OPTIONS (asterisk-docker/router/kamailio.cfg.in) and marks one that stops answering
inactive; the router then refuses calls for it at once (503) instead of letting each
wait out its transaction timeout. This step reads the marks (dispatcher.list) and
stores them (db/router.py `record_health`), so that the portal gets node.down and
node.up once per change, the gauge provisioner_node_up follows, and the node check says
which node the router finds down.

The router is the one that probes: it is what sends the calls, and what it cannot reach
is what matters. With several routers, a node is down when every router that can be
asked marks it down (`merge`). A router that cannot be asked leaves the last marks as
they were (said once in the log); the router step retries its own work meanwhile."""

from __future__ import annotations

import logging

from psycopg_pool import AsyncConnectionPool

from provisioner.clock import Clock
from provisioner.db import events
from provisioner.db import router as db_router
from provisioner.domain.events import NodeHealth
from provisioner.metrics import NODE_UP
from provisioner.router.rpc import Router, RouterRefused, RouterUnavailable
from provisioner.settings import Node
from provisioner.settings import Router as RouterSettings

log = logging.getLogger(__name__)


class HealthWatch:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: RouterSettings,
        nodes: tuple[Node, ...],
        clock: Clock,
    ) -> None:
        self.pool, self.clock = pool, clock
        self.names = {n.sip_uri: n.name for n in nodes}
        self.uris = {n.name: n.sip_uri for n in nodes}
        self.routers = [Router(url, timeout_ms=settings.timeout_ms) for url in settings.rpc_urls]
        self._unreadable: dict[str, str] = {}  # router URL -> the reason last logged
        # What the database holds, as far as this watch knows: a step that sees the same
        # marks again writes nothing (None: not read yet, the first step compares).
        self._stored: dict[str, bool] | None = None

    async def close(self) -> None:
        for router in self.routers:
            await router.close()

    async def step(self) -> int:
        """Read every router's marks once and store what changed; returns how many."""
        seen = merge([m for m in [await self._marks(r) for r in self.routers] if m is not None])
        for node, up in seen.items():
            NODE_UP.labels(node=node).set(1 if up else 0)
        if seen.items() <= (self._stored or {}).items():
            return 0
        now = self.clock()
        async with self.pool.connection() as conn, conn.transaction():
            changed = await db_router.record_health(conn, seen, now)
            for h in changed:
                payload = NodeHealth(node=h.node, sip_uri=self.uris[h.node], up=h.up,
                                     since=now.isoformat())  # fmt: skip
                await events.emit(conn, "node.up" if h.up else "node.down", payload, now)
        self._stored = {**(self._stored or {}), **seen}
        for h in changed:
            if h.up:
                log.warning("router: node %s answers again", h.node)
            else:
                log.error("router: node %s is down (no answer to the router's probes)", h.node)
        return len(changed)

    async def _marks(self, router: Router) -> dict[str, bool | None] | None:
        """One router's marks by node name; None if it cannot be asked (said once)."""
        router.open()
        try:
            marks = await router.marks_of(set(self.names))
        except (RouterUnavailable, RouterRefused) as exc:
            if self._unreadable.get(router.url) != str(exc):
                log.warning("router %s: node health not readable: %s", router.url, exc)
            self._unreadable[router.url] = str(exc)
            return None
        self._unreadable.pop(router.url, None)
        return {self.names[uri]: up for uri, up in marks.items() if uri in self.names}


def merge(each: list[dict[str, bool | None]]) -> dict[str, bool]:
    """The routers' marks as one: a node is up while any router reaches it (what one
    router cannot reach, the carrier's calls through another still can), down when every
    router that marks it says down. A node being tried (None) is no mark yet."""
    seen: dict[str, bool] = {}
    for marks in each:
        for node, up in marks.items():
            if up is not None:
                seen[node] = seen.get(node, False) or up
    return seen
