"""AMI over panoramisk: reload modules and read back what is live."""

from __future__ import annotations

import asyncio
import logging
import re
from types import TracebackType
from typing import Any

from panoramisk import Manager

from provisioner.asterisk.parse import Context
from provisioner.settings import Node

log = logging.getLogger(__name__)
# panoramisk logs every AMI message at DEBUG, and some answers carry secrets (the auth
# objects of PJSIPShowEndpoint): never let those reach a log, whatever its level.
logging.getLogger("panoramisk").setLevel(logging.INFO)

CONNECT_TIMEOUT = 5.0
# At 100 PBXs x 100 phones (10,101 endpoints) a reload of res_pjsip took 3.3 to 3.9 s
# here and `dialplan reload` 4.7 s, drifting to 6 to 7.5 s (spikes to 10 s) as reloads
# repeat (README, Benchmark): leave room above that before calling a node dead.
ACTION_TIMEOUT = 30.0


class AsteriskUnavailable(Exception):
    """The node's AMI cannot be reached or does not answer; the apply is retried later."""


class OperationFailed(Exception):
    """Asterisk refused an incremental change or a targeted read; the round falls back to
    a full reload of the files."""


class _Manager(Manager):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk's manager without its reconnecting: it would log in again behind our
    back and leave the action in flight waiting forever. A lost connection ends the
    round at once (AsteriskUnavailable), and the round is retried as a whole."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.lost = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connected = False
        self.lost.set()


class Ami:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._manager: _Manager | None = None

    async def __aenter__(self) -> Ami:
        node = self._node
        # panoramisk retries a refused connection in the background and logs the
        # failure from a callback; a plain TCP probe first gives a clean, fast answer.
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(node.ami_host, node.ami_port), CONNECT_TIMEOUT
            )
            writer.close()
            await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            raise AsteriskUnavailable(f"AMI {node.ami_host}:{node.ami_port}: {exc}") from None
        manager = _Manager(
            loop=asyncio.get_running_loop(),
            host=node.ami_host,
            port=node.ami_port,
            username=node.ami_username,
            secret=node.ami_secret.value,
            ping_delay=0,
            reconnect_timeout=0,
        )
        try:
            await asyncio.wait_for(manager.connect(), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            manager.close()
            raise AsteriskUnavailable(f"AMI login on {node.name}: {exc!r}") from None
        self._manager = manager
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    async def _send(self, action: dict[str, str]) -> list[Any]:
        """Send one action; list actions (EventList: start) come back as all their events.
        (panoramisk tells the two apart by itself; forcing a list on Reload would wait for
        a completion event that never comes.)"""
        manager = self._manager
        assert manager is not None
        if manager.lost.is_set():
            raise AsteriskUnavailable(f"AMI {action['Action']}: the connection is lost")
        answer = asyncio.ensure_future(manager.send_action(action))
        lost = asyncio.ensure_future(manager.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {answer, lost}, timeout=ACTION_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
        if answer not in done:
            answer.cancel()
            why = "the connection was lost" if lost in done else f"no answer in {ACTION_TIMEOUT} s"
            raise AsteriskUnavailable(f"AMI {action['Action']}: {why}")
        try:
            reply = answer.result()
        except OSError as exc:
            raise AsteriskUnavailable(f"AMI {action['Action']}: {exc!r}") from None
        return list(reply) if isinstance(reply, list) else [reply]

    async def reload(self, module: str) -> None:
        reply = (await self._send({"Action": "Reload", "Module": module}))[0]
        if reply.get("Response") != "Success":
            raise AsteriskUnavailable(f"reload {module}: {reply.get('Message')}")

    async def endpoints(self) -> set[str]:
        return {
            str(m.get("ObjectName"))
            for m in await self._send({"Action": "PJSIPShowEndpoints"})
            if m.get("Event") == "EndpointList"
        }

    async def contexts(self) -> dict[str, set[str]]:
        """Every dialplan context and its extensions (a context with only includes has
        none: its events carry IncludeContext, no Extension)."""
        found: dict[str, set[str]] = {}
        for m in await self._send({"Action": "ShowDialPlan"}):
            if m.get("Event") == "ListDialplan":
                extensions = found.setdefault(str(m.get("Context")), set())
                if m.get("Extension") is not None:
                    extensions.add(str(m.get("Extension")))
        return found

    # --- Incremental changes and targeted reads ---------------------------------------

    async def add_step(
        self, context: str, extension: str, priority: str, app: str, data: str
    ) -> None:
        """One priority (or the hint) of an extension; replaces what was there. Creates
        the context if it is new (registrar pbx_config, as the files' contexts)."""
        action = {"Action": "DialplanExtensionAdd", "Context": context, "Extension": extension,
                  "Priority": priority, "Application": app, "Replace": "yes"}  # fmt: skip
        if data:
            action["ApplicationData"] = data
        reply = (await self._send(action))[0]
        if reply.get("Response") != "Success":
            raise OperationFailed(
                f"add {extension},{priority} to {context}: {reply.get('Message')}"
            )

    async def remove_step(self, context: str, extension: str, priority: str) -> None:
        """Remove one priority; one that is already gone is fine (a retried round)."""
        action = {"Action": "DialplanExtensionRemove", "Context": context,
                  "Extension": extension, "Priority": priority}  # fmt: skip
        reply = (await self._send(action))[0]
        if reply.get("Response") != "Success" and "Failed to remove" not in str(
            reply.get("Message")
        ):
            raise OperationFailed(
                f"remove {extension},{priority} from {context}: {reply.get('Message')}"
            )

    async def command(self, command: str, *, expect: tuple[str, ...]) -> str:
        """A CLI command where AMI has no action; its output must contain one of `expect`."""
        reply = (await self._send({"Action": "Command", "Command": command}))[0]
        lines = reply.get("Output", "")  # a list when the output has several lines
        output = "\n".join(lines) if isinstance(lines, list) else str(lines)
        if reply.get("Response") != "Success" or not any(e in output for e in expect):
            raise OperationFailed(f"{command}: {output or reply.get('Message')}")
        return output

    async def context(self, name: str) -> Context | None:
        """One context as it is live (None: there is none)."""
        found = await self._send({"Action": "ShowDialPlan", "Context": name})
        if found and found[0].get("Response") == "Error":
            if "Did not find context" in str(found[0].get("Message")):
                return None
            raise OperationFailed(f"ShowDialPlan {name}: {found[0].get('Message')}")
        live = Context()
        for m in found:
            if m.get("Event") != "ListDialplan" or m.get("Context") != name:
                continue
            if m.get("IncludeContext") is not None:
                live.includes.add(str(m.get("IncludeContext")))
            elif m.get("Extension") is not None:
                key = (str(m.get("Extension")), str(m.get("Priority")))
                live.steps[key] = (str(m.get("Application", "")), str(m.get("AppData", "") or ""))
        return live

    async def endpoints_like(self, prefix: str) -> set[str]:
        """The live endpoints whose names start with `prefix` (one PBX's: its slug and a
        dash). The CLI's list, not PJSIPShowEndpoint, whose answer carries the auth
        objects' passwords."""
        output = await self.command(
            f"pjsip list endpoints like ^{re.escape(prefix)}",
            expect=("Objects found", "No objects found"),
        )
        found = set()
        for line in output.splitlines():
            words = line.split()
            if len(words) > 1 and words[0] == "Endpoint:" and not words[1].startswith("<"):
                found.add(words[1].split("/", 1)[0])  # name/CID
        return found

    # --- Realtime nodes: sorcery's memory cache -----------------------------------------

    async def expire_cached(self, kind: str, name: str) -> None:
        """Drop one PJSIP object from sorcery's memory cache (res_pjsip/<kind>): the
        next lookup reads it from the database. One that is not cached is fine."""
        action = {"Action": "SorceryMemoryCacheExpireObject", "Cache": f"res_pjsip/{kind}",
                  "Object": name}  # fmt: skip
        reply = (await self._send(action))[0]
        message = str(reply.get("Message"))
        if reply.get("Response") != "Success" and "could not be expired" not in message:
            raise OperationFailed(f"expire {kind} {name} from the cache: {message}")

    async def expire_all_cached(self, kind: str) -> None:
        """Empty res_pjsip/<kind>'s cache: every next lookup reads the database."""
        await self._whole_cache("SorceryMemoryCacheExpire", kind, "expire")

    async def stale_all_cached(self, kind: str) -> None:
        """Mark every object of res_pjsip/<kind>'s cache stale: still served, and read
        again from the database in the background on its next use."""
        await self._whole_cache("SorceryMemoryCacheStale", kind, "mark stale")

    async def _whole_cache(self, action: str, kind: str, doing: str) -> None:
        reply = (await self._send({"Action": action, "Cache": f"res_pjsip/{kind}"}))[0]
        if reply.get("Response") != "Success":
            raise OperationFailed(f"{doing} the {kind} cache: {reply.get('Message')}")

    async def endpoint_shown(self, name: str) -> str | None:
        """`pjsip show endpoint NAME` (None: there is no such endpoint). The CLI, not
        PJSIPShowEndpoint, whose answer carries the auth objects' passwords."""
        output = await self.command(
            f"pjsip show endpoint {name}", expect=("Endpoint:", "Unable to find object")
        )
        return None if "Unable to find object" in output else output
