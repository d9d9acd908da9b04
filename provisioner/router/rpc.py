"""Kamailio's JSON-RPC over HTTP (modules jsonrpcs + xhttp): the commands of the htable
module on the `numbers` table, which maps an E.164 number to its node's SIP URI.

Kamailio's jsonrpcs takes no batches, and a change of one block is a call per number
per phase: the client keeps a few HTTP connections open (keep-alive, CONNECTIONS, fewer
than the router's TCP workers) and callers may run calls side by side.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Collection
from typing import Any

import aiohttp

TABLE = "numbers"
CONNECTIONS = 2  # the router's TCP workers (tcp_children) serve them; 2 cores here
# A router whose nodes differ from ours is told to load them again at most this often
# (dispatcher takes one reload a second: reload_delta in kamailio.cfg).
RELOAD_NODES_EVERY = 2.0

log = logging.getLogger(__name__)


class RouterUnavailable(Exception):
    """The router cannot be reached or does not answer; the change waits for a retry."""


class RouterRefused(Exception):
    """The router answered with an error."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _missing(exc: RouterRefused) -> bool:
    """htable's answer for a key it does not have: `htable.get` says 500 "Key name
    doesn't exist in htable.", `htable.delete` 404 "Key not found in htable."."""
    text = str(exc).lower()
    return "doesn't exist" in text or "not found" in text


class Router:
    def __init__(self, url: str, *, timeout_ms: int = 2000) -> None:
        self.url = url
        # The timeout covers one call on the wire (connecting, and each read), never the
        # wait for one of the client's connections: a thousand calls queued behind each
        # other are slow, not failed.
        seconds = timeout_ms / 1000
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._nodes_told = -RELOAD_NODES_EVERY

    async def __aenter__(self) -> Router:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        """Its connections, kept for the calls to come (a step that runs every second
        keeps one client, not a new one per pass)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=CONNECTIONS)
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, *params: Any) -> Any:
        assert self._session is not None, "open the router client first (or `async with`)"
        body = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": next(self._ids)}
        try:
            async with self._session.post(self.url, json=body, allow_redirects=False) as resp:
                # A JSON-RPC error comes with the HTTP status of its code (htable.get of a
                # missing key: 500 with a JSON body); anything but JSON is no answer.
                status, text = resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RouterUnavailable(f"{method}: {type(exc).__name__}: {exc}") from None
        try:
            answer = json.loads(text)
        except ValueError:
            raise RouterUnavailable(f"{method}: HTTP {status}, not a JSON-RPC answer") from None
        if not isinstance(answer, dict):
            raise RouterRefused(f"{method}: not a JSON-RPC answer")
        if "error" in answer:
            error = answer["error"]
            if isinstance(error, dict):
                raise RouterRefused(f"{method}: {error.get('message')}", error.get("code"))
            raise RouterRefused(f"{method}: {error}")
        return answer.get("result")

    async def set(self, number: str, uri: str) -> None:
        await self.call("htable.sets", TABLE, number, uri)

    async def delete(self, number: str) -> None:
        """Remove the entry; one already gone is fine (a retry after a partial push)."""
        try:
            await self.call("htable.delete", TABLE, number)
        except RouterRefused as exc:
            if not _missing(exc):
                raise

    async def get(self, number: str) -> str | None:
        """The entry's value; None if the table has no such key."""
        try:
            result = await self.call("htable.get", TABLE, number)
        except RouterRefused as exc:
            if _missing(exc):
                return None
            raise
        item = result.get("item") if isinstance(result, dict) else None
        value = item.get("value") if isinstance(item, dict) else None
        return str(value) if value is not None else None

    async def dump(self) -> dict[str, str]:
        """The whole table (the check; heavy at a million entries: seconds)."""
        result = await self.call("htable.dump", TABLE)
        table: dict[str, str] = {}
        for entry in result or []:
            for slot in entry.get("slot", []):
                table[str(slot["name"])] = str(slot["value"])
        return table

    async def marks(self) -> dict[str, bool | None]:
        """The router's nodes (dispatcher's destinations, by SIP URI) and what its
        probes say of each: active (A) is up; inactive (I) or disabled (D) is down;
        trying (T: a probe failed, fewer than the threshold in a row, or an inactive
        node's probe failed again) says nothing new: None."""
        try:
            result = await self.call("dispatcher.list")
        except RouterRefused as exc:
            if "No Destination Sets" in str(exc):  # it has loaded no node yet
                return {}
            raise
        marks: dict[str, bool | None] = {}
        for record in (result or {}).get("RECORDS") or []:
            for target in (record.get("SET") or {}).get("TARGETS") or []:
                dest = target.get("DEST") or {}
                flags = str(dest.get("FLAGS", ""))
                if "URI" in dest:
                    known = flags[:1] in ("A", "I", "D")
                    marks[str(dest["URI"])] = flags[:1] == "A" if known else None
        return marks

    async def marks_of(self, nodes: Collection[str]) -> dict[str, bool | None]:
        """The marks (`marks`) of a router that should probe `nodes` (SIP URIs, as the
        router step wrote them to router_dispatcher). One that has other nodes (it
        started before they were written, or they changed) is told to load them again:
        the one rule of the router step and of the health watch."""
        marks = await self.marks()
        if set(marks) != set(nodes) and time.monotonic() - self._nodes_told >= RELOAD_NODES_EVERY:
            self._nodes_told = time.monotonic()
            try:
                await self.reload_nodes()
            except RouterRefused as exc:  # one reload at a time: the next ask tries again
                log.info("router %s: nodes not reloaded yet: %s", self.url, exc)
        return marks

    async def started(self) -> str:
        """When this router's Kamailio started (core.uptime's up_since): a new value
        means a new process, which loaded the table at its start."""
        result = await self.call("core.uptime")
        since = result.get("up_since") if isinstance(result, dict) else None
        if since is None:
            raise RouterRefused("core.uptime: no up_since")
        return str(since)

    async def reload_numbers(self) -> None:
        """Load the whole table again from the database (router_numbers), slot by slot:
        a router that missed changes (unreachable, or restarted while one was pushed)
        catches up. Seconds at a million keys."""
        await self.call("htable.reload", TABLE)

    async def reload_nodes(self) -> None:
        """Load the nodes to probe again (router_dispatcher), after they changed."""
        await self.call("dispatcher.reload")
