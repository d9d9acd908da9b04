"""Node health as the SIP router sees it. Kamailio's dispatcher module probes every node
with OPTIONS (asterisk-docker/router/kamailio.cfg.in) and marks one that stops answering
inactive; the router then refuses calls for it at once (503) instead of letting each
wait out its transaction timeout. This step reads the marks (dispatcher.list) and
stores them (db/router.py `record_health`), so that the portal gets node.down and
node.up once per change, the gauge provisioner_node_up follows, and the node check says
which node the router finds down.

The router is the one that probes: it is what sends the calls, and what it cannot reach
is what matters. A router that cannot be asked leaves the last marks as they were
(said once in the log); the router step retries its own work meanwhile."""

from __future__ import annotations

import logging
import time

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

# A router whose nodes differ from ours (started before the router step wrote them, or
# the settings changed) is told to load them again, at most this often.
RELOAD_EVERY = 10.0


class HealthWatch:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: RouterSettings,
        nodes: tuple[Node, ...],
        clock: Clock,
    ) -> None:
        self.pool, self.settings, self.clock = pool, settings, clock
        self.uris = {n.sip_uri: n.name for n in nodes}
        self._unreadable: str | None = None  # the reason last logged
        self._reloaded = -RELOAD_EVERY

    async def step(self) -> int:
        """Read the router's marks once and store them; returns how many changed."""
        try:
            async with Router(self.settings.rpc_url, timeout_ms=self.settings.timeout_ms) as r:
                marks = await r.marks()
                stale = set(marks) != set(self.uris)
                if stale and time.monotonic() - self._reloaded >= RELOAD_EVERY:
                    self._reloaded = time.monotonic()
                    await r.reload_nodes()
        except (RouterUnavailable, RouterRefused) as exc:
            if self._unreadable != str(exc):
                log.warning("router: node health not readable: %s", exc)
            self._unreadable = str(exc)
            return 0
        self._unreadable = None
        seen = {
            self.uris[uri]: up
            for uri, up in marks.items()
            if uri in self.uris and up is not None  # being tried: nothing new yet
        }
        for node, up in seen.items():
            NODE_UP.labels(node=node).set(1 if up else 0)
        now = self.clock()
        async with self.pool.connection() as conn, conn.transaction():
            changed = await db_router.record_health(conn, seen, now)
            for h in changed:
                uri = next(u for u, name in self.uris.items() if name == h.node)
                payload = NodeHealth(node=h.node, sip_uri=uri, up=h.up, since=now.isoformat())
                await events.emit(conn, "node.up" if h.up else "node.down", payload, now)
        for h in changed:
            if h.up:
                log.warning("router: node %s answers again", h.node)
            else:
                log.error("router: node %s is down (no answer to the router's probes)", h.node)
        return len(changed)
