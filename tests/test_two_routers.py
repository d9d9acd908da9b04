"""Two SIP routers side by side (router.rpc_url lists both): the router step tells each
every change and reads each back; the carrier sends to either and retries on the other.
One router killed under load costs no call sent after the carrier's retry, and a block
moved meanwhile goes live on the survivor; a router that was unreachable while a change
was made reloads its table when it answers again. Real Kamailio twice, the lab's two
Asterisks, the carrier as a Prober that fails over like an SBC with two routers."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import pytest
from fixtures_lab import Lab
from helpers import TARGET
from lab_helpers import CARRIER_HOST
from ports import free_port
from psycopg_pool import AsyncConnectionPool
from router_helpers import (
    ROUTER_IP,
    Platform,
    RouterLab,
    node_named,
    platform_behind,
    routed_uri,
    running_router,
)
from waiting import wait_until

from bench.sip import Prober, RingingPhone
from provisioner.db.router import Change
from provisioner.render.render import own_files
from provisioner.router.health import merge
from provisioner.router.rpc import Router, RouterRefused, RouterUnavailable
from provisioner.router.sync import Instance, RouterSync
from provisioner.settings import Node, Secret, Settings, SettingsError
from provisioner.settings.load import load as load_settings

MUNICH = "+49891234567"  # A's block, on node `default`
BERLIN = "+49301234560"  # B's block, on node `node-b` until B's PBX moves


async def behind(scene: Platform, router: RouterLab) -> float | None:
    """The gauge provisioner_router_behind of the router (None: never set)."""
    response = await scene.api.client.get("/metrics")
    wanted = f'provisioner_router_behind{{router="{router.rpc_url}"}}'
    for line in (await response.text()).splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    return None


async def move_b_to_default(scene: Platform, survivor: RouterLab) -> float:
    """B's PBX moves to `default`; returns the seconds until the router that answers
    sends its numbers there and the switch is recorded."""
    started = time.monotonic()
    await scene.api.ok("PUT", f"/v1/accounts/{TARGET}/pbx", {"node": "default"})
    home = node_named(scene.settings, "default").sip_uri
    await wait_until(lambda: routed_uri(survivor, BERLIN) == home,
                     "B's numbers not routed to default", 30)  # fmt: skip
    await scene.routed(TARGET, timeout=30)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def two_routers(
    settings: Settings, first_lab: Lab, second_lab: Lab, tmp_path: Path
) -> AsyncIterator[tuple[Platform, RouterLab, RouterLab]]:
    """The two-node platform behind two routers side by side: (it, router, router-2)."""
    db_url = settings.database.url.value
    async with (
        running_router(tmp_path, db_url) as first,
        running_router(tmp_path, db_url, "router-2") as second,
        platform_behind(settings, first, first_lab, second_lab, beside=second) as scene,
    ):
        yield scene, first, second


async def test_one_router_killed_under_load_loses_no_call_after_the_retry(
    settings: Settings, clean_lab: Lab, clean_second_lab: Lab, tmp_path: Path
) -> None:
    async with two_routers(settings, clean_lab, clean_second_lab, tmp_path) as (
        scene, first, second,
    ):  # fmt: skip
        home = node_named(scene.settings, "default").sip_uri
        assert routed_uri(first, MUNICH) == home
        assert routed_uri(second, MUNICH) == home, "the second router was not told"

        scene.register("A", "default")
        phone = RingingPhone(scene.phones["A"].port)
        await phone.start()
        carrier = Prober(CARRIER_HOST, free_port(), first.sip_port, asterisk_host=ROUTER_IP,
                         fallback_port=second.sip_port)  # fmt: skip
        numbers = [f"+4989123456{i}" for i in range(100)]  # the block is 0-99
        try:
            async with carrier.calling(numbers, rate=20, at_least=10) as finish:
                await wait_until(lambda: phone.invites >= 20, "A's phone does not ring", 10)
                killed = time.time()
                first.kill()
                # A block moves while one router is dead: it goes live on the survivor.
                moved_in = await move_b_to_default(scene, second)
                # Go on calling for 5 s after the move.
                await wait_until(lambda: time.time() - killed > moved_in + 5, "(not reached)", 40)
                await finish()
        finally:
            phone.close()
        after = [c for c, sent in carrier.sent.items() if sent > killed]
        lost = [c for c in after if c not in carrier.rang]
        before = [c for c, sent in carrier.sent.items() if sent <= killed]
        summary = (
            f"{len(carrier.sent)} calls, {len(after)} after the kill, {carrier.retried} sent"
            f" again to the other router, {len([c for c in before if c not in carrier.rang])}"
            f" of {len(before)} before the kill lost; B's block moved and routed in"
            f" {moved_in:.1f} s with one router dead"
        )
        print(summary)
        assert len(after) >= 80, summary
        assert not lost, f"{summary}; lost: " + ", ".join(
            f"{carrier.final.get(c)} {carrier.answered_by.get(c, '')}" for c in lost[:10]
        )
        assert carrier.retried >= 1, summary
        await scene.call_rings(BERLIN, "B", "default", via=second)

        # The killed router starts again: it loads the table as it is now.
        first.up()
        await wait_until(lambda: routed_uri(first, BERLIN) == home,
                         "the restarted router sends B's numbers elsewhere", 20)  # fmt: skip
        await scene.call_rings(BERLIN, "B", "default", via=first)


async def test_a_router_unreachable_during_a_change_catches_up_when_it_answers(
    settings: Settings, clean_lab: Lab, clean_second_lab: Lab, tmp_path: Path
) -> None:
    """The second router frozen (SIGSTOP of all its processes: it neither answers nor
    restarts) while B's PBX moves: the change goes live on the first, the service marks
    the second behind, and once it runs again it reloads its table from the database."""
    async with two_routers(settings, clean_lab, clean_second_lab, tmp_path) as (
        scene, first, second,
    ):  # fmt: skip
        home = node_named(scene.settings, "default").sip_uri
        group = int(second.state()["group"])
        os.killpg(group, signal.SIGSTOP)
        try:
            moved_in = await move_b_to_default(scene, first)

            async def marked_behind() -> bool:
                return await behind(scene, second) == 1.0

            await wait_until(marked_behind, "router-2 never marked behind", 10)
            assert await behind(scene, first) is None, "the first router missed nothing"
        finally:
            os.killpg(group, signal.SIGCONT)
        thawed = time.monotonic()

        async def caught_up() -> bool:
            return await behind(scene, second) == 0.0

        await wait_until(caught_up, "router-2 never caught up", 20)
        took = time.monotonic() - thawed
        assert routed_uri(second, BERLIN) == home
        print(f"B's block routed in {moved_in:.1f} s with router-2 frozen; router-2 reloaded"
              f" its table {took:.1f} s after it ran again")  # fmt: skip
        await scene.call_rings(BERLIN, "B", "default", via=second)


# --- Our own logic, without Kamailio ---------------------------------------------------


def test_a_node_is_down_only_when_every_router_that_marks_it_says_so() -> None:
    assert merge([{"a": True}, {"a": False}]) == {"a": True}
    assert merge([{"a": False}, {"a": False}]) == {"a": False}
    assert merge([{"a": False}, {"a": None}]) == {"a": False}, "being tried is no mark"
    assert merge([{"a": None}]) == {}
    assert merge([{"a": False}, {}]) == {"a": False}, "a router that does not know it"
    assert merge([]) == {}


def test_several_routers_and_their_addresses_are_settings(tmp_path: Path) -> None:
    urls = "http://127.0.0.3:5071/RPC, http://127.0.0.3:5072/RPC"
    loaded = load_settings(env={"PROVISIONER_ROUTER_RPC_URL": urls})
    assert loaded.router.rpc_urls == ("http://127.0.0.3:5071/RPC", "http://127.0.0.3:5072/RPC")
    assert not load_settings(env={}).router, "no URL: no router"
    for bad in ("http://a/RPC,http://a/RPC", "http://a/RPC,ftp://b/RPC"):
        with pytest.raises(SettingsError, match=r"router\.rpc_url"):
            load_settings(env={"PROVISIONER_ROUTER_RPC_URL": bad})
    node = Node(name="n1", ami_username="u", ami_secret=Secret("s"), output_dir=tmp_path,
                carrier_host="127.0.0.2", router_host="127.0.0.3,127.0.0.4")  # fmt: skip
    carrier = own_files(node)["pjsip/node-carrier.conf"]
    assert "\nmatch = 127.0.0.3\nmatch = 127.0.0.4\n" in carrier, carrier
    for hostile in ("127.0.0.3,", "127.0.0.3\nmatch=0.0.0.0/0", "127.0.0.3;x", ",127.0.0.4"):
        with pytest.raises(SettingsError, match="bad host"):
            replace(node, router_host=hostile)


@dataclass
class FakeRouter:
    """A router client for the step's own logic: holds what it is told, or fails."""

    url: str
    fails: type[Exception] | None = None
    table: dict[str, str] = field(default_factory=dict)
    up_since: str = "2026-12-06 04:00:00"
    reloads: int = 0

    async def started(self) -> str:
        self._maybe_fail()
        return self.up_since

    async def reload_numbers(self) -> None:
        self._maybe_fail()
        self.reloads += 1

    async def set(self, key: str, uri: str) -> None:
        self._maybe_fail()
        self.table[key] = uri

    async def delete(self, key: str) -> None:
        self._maybe_fail()
        self.table.pop(key, None)

    async def get(self, key: str) -> str | None:
        self._maybe_fail()
        return self.table.get(key)

    def _maybe_fail(self) -> None:
        if self.fails is not None:
            raise self.fails(f"{self.url}: as the test wants")


async def test_a_change_is_done_once_every_router_that_answers_holds_it() -> None:
    change = Change("b1", 1, "n1", ("+4930/11",), None, None, ())
    uris = {"n1": "sip:127.0.0.1:5060"}

    async def push(*routers: FakeRouter) -> tuple[str | None, list[str]]:
        sync = RouterSync.__new__(RouterSync)  # the push alone: no pool, no clock
        sync.routers = [Instance(cast(Router, r)) for r in routers]
        error, missed = await sync._push(change, uris)
        return error, [i.url for i in missed]

    assert await push(FakeRouter("a"), FakeRouter("b", RouterUnavailable)) == (None, ["b"])
    error, missed = await push(
        FakeRouter("a", RouterUnavailable), FakeRouter("b", RouterUnavailable)
    )
    assert error is not None and "a: as the test wants" in error and missed == []
    error, _ = await push(FakeRouter("a"), FakeRouter("b", RouterRefused))
    assert error is not None and "b: as the test wants" in error, "a router that refuses"
    assert await push(FakeRouter("a")) == (None, [])
    # A node the settings give no SIP address: refused before any router is told.
    change = replace(change, node="n2")
    told = FakeRouter("a")
    error, _ = await push(told)
    assert error is not None and "node n2 has no SIP address" in error and told.table == {}


async def test_a_router_reloads_when_first_seen_started_again_or_behind(db_url: str) -> None:
    """What a router missed before this step started (a change made while it was away,
    by an instance that has stopped since) is known to no one here: the first answer of
    each router reloads its table. After that, only a restart or a missed change does."""
    router = FakeRouter("a")
    instance = Instance(cast(Router, router))
    async with AsyncConnectionPool(db_url, min_size=1, open=False) as pool:
        sync = RouterSync.__new__(RouterSync)  # the catch-up alone: its pool, no routers
        sync.pool = pool
        router.fails = RouterUnavailable
        await sync._catch_up(instance)
        router.fails = None
        assert router.reloads == 0 and instance.started is None, "not there: asked again"
        await sync._catch_up(instance)
        assert router.reloads == 1, "first seen"
        await sync._catch_up(instance)
        assert router.reloads == 1, "nothing missed, not started again"
        router.up_since = "2026-12-06 05:00:00"
        await sync._catch_up(instance)
        assert router.reloads == 2, "started again"
        instance.behind = True
        await sync._catch_up(instance)
        assert (router.reloads, instance.behind) == (3, False), "missed a change"
