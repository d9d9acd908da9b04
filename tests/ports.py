"""Loopback ports for the tests' servers and SIP peers, never one handed out twice in
a run."""

from __future__ import annotations

import random
import socket

_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP both (SIP and AMI ports of the lab), and
    never one handed out before in this run: the kernel may offer a port again as soon as
    the probe closes it, and two phones of one scene once got the same port (the BLF
    test's watcher then received the calls meant for the phone it watched)."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            if port in _GIVEN_PORTS:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _GIVEN_PORTS.add(port)
            return port


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` ports in a row, each free on 127.0.0.1 for TCP and UDP (what
    `lab up --nodes N` takes: its base port plus one per node). Below the kernel's
    ephemeral range (32768 and up here), where free_port's ports are: a port there may be
    the local end of any client connection a moment later, so `base + 1` of a free_port
    once was taken when the lab came to bind it."""
    rng = random.Random()
    while True:
        base = rng.randrange(20000, 32000 - count)
        wanted = range(base, base + count)
        if _GIVEN_PORTS.intersection(wanted):
            continue
        probes: list[socket.socket] = []
        try:
            for port in wanted:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    probe = socket.socket(socket.AF_INET, kind)
                    probes.append(probe)
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        _GIVEN_PORTS.update(wanted)
        return base
