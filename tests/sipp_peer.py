"""Real SIP peers: run a sipp scenario from tests/sipp/ and return what was said on the wire.

A test asserts on SipResult (request and status lines, headers) and, when it fails,
prints it: the SIP evidence of what happened.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tier import refuse_in_fast_tier

SCENARIOS = Path(__file__).resolve().parent / "sipp"
SIPP = "/usr/bin/sipp"


@dataclass(frozen=True)
class SipMessage:
    direction: str  # "sent" or "received"
    first_line: str
    headers: dict[str, str]
    time: float = 0.0  # when sipp logged it (seconds since the epoch)
    body: str = ""

    @property
    def status(self) -> int | None:
        match = re.match(r"SIP/2\.0 (\d{3})", self.first_line)
        return int(match.group(1)) if match else None

    @property
    def method(self) -> str | None:
        return None if self.first_line.startswith("SIP/2.0") else self.first_line.split(" ")[0]


@dataclass
class SipResult:
    returncode: int
    messages: list[SipMessage] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def received_statuses(self) -> list[int]:
        return [m.status for m in self.messages if m.direction == "received" and m.status]

    def evidence(self) -> str:
        lines = [f"sipp exit code {self.returncode}"]
        for m in self.messages:
            arrow = ">>" if m.direction == "sent" else "<<"
            interesting = {
                k: v
                for k, v in m.headers.items()
                if k in ("from", "to", "contact", "www-authenticate", "refer-to")
            }
            lines.append(f"{arrow} {m.first_line} {interesting}")
        lines.append(self.output[-1500:])
        return "\n".join(lines)


_SEPARATOR = re.compile(r"^-{10,}\s*(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)?")


def parse_trace(text: str) -> list[SipMessage]:
    """sipp's -message_file: a line of dashes with a timestamp, "UDP message sent (…)"
    or "… received …", a blank line, then the SIP message."""
    blocks: list[tuple[float, list[str]]] = []
    for line in text.splitlines():
        separator = _SEPARATOR.match(line)
        if separator:
            stamp = separator.group(1)
            when = datetime.fromisoformat(stamp).timestamp() if stamp else 0.0
            blocks.append((when, []))
        elif blocks:
            blocks[-1][1].append(line)
    messages = []
    for when, lines in blocks:
        head = next((i for i, line in enumerate(lines) if " message " in line), None)
        if head is None:
            continue
        direction = "sent" if " sent" in lines[head] else "received"
        rest = [line for line in lines[head + 1 :]]
        while rest and not rest[0].strip():
            rest.pop(0)
        if not rest:
            continue
        headers: dict[str, str] = {}
        body_at = len(rest)
        for index, line in enumerate(rest[1:], start=1):
            if not line.strip():
                body_at = index + 1
                break
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        body = "\n".join(rest[body_at:])
        messages.append(SipMessage(direction, rest[0].strip(), headers, when, body))
    return messages


@dataclass
class Running:
    """A sipp started in the background (a phone or carrier waiting for a call)."""

    process: subprocess.Popen[str]
    work: Path

    def wait(self, timeout: float = 30.0) -> SipResult:
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        trace = self.work / "messages.log"
        text = trace.read_text(errors="replace") if trace.exists() else ""
        shutil.rmtree(self.work, ignore_errors=True)
        return SipResult(self.process.returncode, parse_trace(text), out + err)


def start_scenario(
    scenario: str,
    *,
    remote_port: int,
    remote_ip: str = "127.0.0.1",
    service: str = "service",
    username: str | None = None,
    password: str | None = None,
    local_ip: str = "127.0.0.1",
    local_port: int = 0,
    variables: dict[str, str] | None = None,
    timeout: float = 20.0,
    extra: list[str] | None = None,
    domain: str | None = None,
) -> Running:
    """Start tests/sipp/<scenario>.xml once against Asterisk (or the router) on
    <remote_ip>:<remote_port>. With `domain`, a phone of that PBX's SIP domain behind
    the router: every URI's host <remote_ip>:<remote_port> in the scenario is the
    domain instead (sipp still sends to <remote_ip>:<remote_port>, its outbound proxy)."""
    refuse_in_fast_tier("sipp")
    if shutil.which(SIPP) is None:
        raise AssertionError(f"{SIPP} is missing: install Debian's sip-tester (make test does)")
    work = Path(tempfile.mkdtemp(prefix="prov-sipp-"))
    script = SCENARIOS / f"{scenario}.xml"
    if domain is not None:
        text = script.read_text().replace("[remote_ip]:[remote_port]", "[domain]")
        script = work / f"{scenario}.xml"
        script.write_text(text)
        extra = [*(extra or []), "-key", "domain", domain]
    args = [
        SIPP, f"{remote_ip}:{remote_port}",
        "-sf", str(script),
        "-i", local_ip, "-p", str(local_port),
        "-m", "1", "-s", service,
        "-nostdin", "-trace_msg", "-message_file", str(work / "messages.log"),
        "-timeout", f"{int(timeout)}s", "-timeout_error",
    ]  # fmt: skip
    if username is not None:
        args += ["-au", username, "-ap", password or ""]
    for name, value in (variables or {}).items():
        args += ["-set", name, value]
    args += extra or []
    process = subprocess.Popen(
        args, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if local_port:  # a peer that waits for a call: ready once its port is bound
        deadline = time.monotonic() + READY_TIMEOUT
        while not udp_bound(local_ip, local_port):
            if process.poll() is not None or time.monotonic() > deadline:
                out, err = process.communicate()
                raise AssertionError(f"sipp {scenario} did not bind {local_port}: {out}{err}")
            time.sleep(0.02)
    return Running(process, work)


READY_TIMEOUT = 10.0


def udp_bound(ip: str, port: int) -> bool:
    """Whether some socket is bound to ip:port (UDP), from the kernel's table."""
    # The address as the kernel lists it (little-endian hex), or the wildcard.
    wanted = {f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}", f"00000000:{port:04X}"}
    lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    return any(line.split()[1] in wanted for line in lines)


def run_scenario(scenario: str, *, timeout: float = 20.0, **options: Any) -> SipResult:
    """Run a scenario to its end; the options are those of start_scenario."""
    return start_scenario(scenario, timeout=timeout, **options).wait(timeout + 10)


def assert_blind_transfer(call: SipResult, referred: SipResult, answered: SipResult) -> None:
    """The carrier's call was answered, REFERred (202 Accepted) and reached the phone it
    was transferred to, still from the carrier's caller."""
    evidence = "\n---\n".join(r.evidence() for r in (call, referred, answered))
    assert call.ok, evidence
    assert referred.ok and 202 in referred.received_statuses(), evidence
    assert answered.ok, evidence
    invite = next(m for m in answered.messages if m.method == "INVITE")
    assert "+4940999999" in invite.headers["from"], evidence  # the carrier's caller


def dialog_states(result: SipResult) -> list[str]:
    """The <state> of every NOTIFY body the subscriber received, in order."""
    states = []
    for m in result.messages:
        if m.method == "NOTIFY":
            found = re.findall(r"<state[^>]*>([a-z]+)</state>", m.body)
            states.append(found[0] if found else "idle")
    return states
