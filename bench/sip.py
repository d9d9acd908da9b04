"""The carrier's side of the benchmark, in plain SIP over UDP on loopback.

`Caller` sends an INVITE for a number to Asterisk from the carrier's address, as the
SBC would, and tries again (every few milliseconds) until the call rings somewhere; a
moved number is "live" when its call rings the target PBX's phone (a registered sipp
phone, see tests/sipp/uas_ring.xml). `CarrierUas` is where trunks send outbound calls:
it answers each INVITE 486 and notes when it came and for which number.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


def parse_headers(text: str) -> tuple[str, dict[str, str]]:
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    found: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), value.strip())
    return head[0], found


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data.decode(errors="replace"), addr))


async def bind_udp(host: str, port: int) -> UdpEndpoint:
    """A UDP endpoint on host:port whose datagrams queue up."""
    loop = asyncio.get_running_loop()
    _, endpoint = await loop.create_datagram_endpoint(UdpEndpoint, local_addr=(host, port))
    return endpoint


def close_udp(endpoint: UdpEndpoint | None, task: asyncio.Task[None] | None = None) -> None:
    """Stop a peer's reader (if it has one) and its socket."""
    if task:
        task.cancel()
    if endpoint and endpoint.transport:
        endpoint.transport.close()


@dataclass
class Caller:
    """INVITEs from the carrier (host, port) to Asterisk at asterisk_host:asterisk_port."""

    host: str
    port: int
    asterisk_port: int
    asterisk_host: str = "127.0.0.1"  # or the SIP router in front of the nodes
    _endpoint: UdpEndpoint | None = None

    async def start(self) -> None:
        self._endpoint = await bind_udp(self.host, self.port)

    def close(self) -> None:
        close_udp(self._endpoint)

    def _send(self, text: str) -> None:
        assert self._endpoint and self._endpoint.transport
        self._endpoint.transport.sendto(text.encode(), (self.asterisk_host, self.asterisk_port))

    async def until_rings(self, number: str, within: float, pause: float = 0.01) -> float:
        """Call until a call rings (180/183); returns the time.time() it did."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            # One attempt waits as long as it takes once Asterisk answered it (a call that
            # rings late is a late ring, not a lost one).
            rang = await self._attempt(number, deadline - time.monotonic())
            if rang is not None:
                return rang
            await asyncio.sleep(pause)
        raise TimeoutError(f"{number} did not ring within {within} s")

    async def setup_time(self, number: str, within: float = 10) -> float | None:
        """One call: seconds from its INVITE until it rings (None: it did not)."""
        sent = time.time()
        rang = await self._attempt(number, within)
        return None if rang is None else rang - sent

    async def _attempt(self, number: str, within: float) -> float | None:
        assert self._endpoint
        call_id, tag, branch = secrets.token_hex(8), secrets.token_hex(4), secrets.token_hex(8)
        target = f"sip:{number}@{self.asterisk_host}:{self.asterisk_port}"
        via = f"SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{branch};rport"
        sdp = (
            f"v=0\r\no=- 1 1 IN IP4 {self.host}\r\ns=-\r\nc=IN IP4 {self.host}\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
        )
        common = (
            f"Via: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:carrier@{self.host}>;tag={tag}\r\n"
            f"To: <sip:{number}@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
        )
        invite = (
            f"INVITE {target} SIP/2.0\r\n{common}CSeq: 1 INVITE\r\n"
            f"Contact: <sip:carrier@{self.host}:{self.port}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
        )
        self._send(invite)
        deadline = time.monotonic() + within
        rang: float | None = None
        answered = False  # any response: no more retransmissions (RFC 3261 timer A)
        resend = 0.5
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return rang
            try:
                wait = left if answered else min(left, resend)
                text, _ = await asyncio.wait_for(self._endpoint.queue.get(), wait)
            except TimeoutError:
                if not answered:
                    self._send(invite)
                    resend = min(resend * 2, 4.0)
                continue
            first, headers = parse_headers(text)
            if os.environ.get("BENCH_DEBUG"):
                print(
                    f"      {time.time():.3f} caller got {first!r} call-id {headers.get('call-id')}"
                )
            if headers.get("call-id") != call_id or not first.startswith("SIP/2.0"):
                continue
            answered = True
            status = int(first.split()[1])
            method = headers.get("cseq", "").split()[-1]
            if method == "INVITE" and status in (180, 183) and rang is None:
                rang = time.time()
                self._send(f"CANCEL {target} SIP/2.0\r\n{common}CSeq: 1 CANCEL\r\n"
                           "Content-Length: 0\r\n\r\n")  # fmt: skip
            elif method == "INVITE" and status >= 300:
                to = headers.get("to", f"<sip:{number}@127.0.0.1>")
                ack = common.replace(f"To: <sip:{number}@127.0.0.1>", f"To: {to}")
                self._send(f"ACK {target} SIP/2.0\r\n{ack}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
                return rang
            elif method == "INVITE" and status == 200:  # answered (never by our phones)
                return rang or time.time()


@dataclass
class CarrierUas:
    """The carrier SBC for outbound calls: notes each INVITE and refuses it (486)."""

    host: str
    port: int
    invites: list[tuple[float, str]] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)  # of each INVITE in `invites`
    _endpoint: UdpEndpoint | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._endpoint = await bind_udp(self.host, self.port)
        self._task = asyncio.create_task(self._serve())

    def close(self) -> None:
        close_udp(self._endpoint, self._task)

    async def _serve(self) -> None:
        assert self._endpoint and self._endpoint.transport
        while True:
            text, addr = await self._endpoint.queue.get()
            first, headers = parse_headers(text)
            if not first.startswith("INVITE "):
                continue
            self.invites.append((time.time(), first.split()[1]))
            self.call_ids.append(headers.get("call-id", ""))
            tag = secrets.token_hex(4)
            head = text.split("\r\n\r\n", 1)[0].split("\r\n")
            vias = [line for line in head if line.lower().startswith(("via:", "v:"))]
            reply = (
                "SIP/2.0 486 Busy Here\r\n" + "\r\n".join(vias) + "\r\n"
                f"From: {headers.get('from', '')}\r\nTo: {headers.get('to', '')};tag={tag}\r\n"
                f"Call-ID: {headers.get('call-id', '')}\r\nCSeq: {headers.get('cseq', '')}\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            self._endpoint.transport.sendto(reply.encode(), addr)

    def seen(self, needle: str, since: float) -> float | None:
        for when, uri in self.invites:
            if when >= since and needle in uri:
                return when
        return None


@dataclass
class Prober:
    """The carrier calls on a schedule, several calls in flight at once: each call notes
    when it rang (180/183) and is then cancelled; its final answer is ACKed. Answers are
    told apart by Call-ID, so a call held up (by a reload) delays no other. `run` calls
    at a steady rate; a call answered >= 300 before it rang reached no phone
    (`misrouted`).

    With `fallback_port` (a second router on the same address) it behaves as a carrier
    with two routers: a call that hears nothing at all (not even 100 Trying) within
    `failover_after` seconds is sent again to the other one, which it prefers from then
    on (`retried` counts them)."""

    host: str
    port: int
    asterisk_port: int
    asterisk_host: str = "127.0.0.1"  # or the SIP router in front of the nodes
    fallback_port: int = 0
    failover_after: float = 0.5
    retried: int = 0
    sent: dict[str, float] = field(default_factory=dict)  # call-id: time.time() of INVITE
    rang: dict[str, float] = field(default_factory=dict)
    final: dict[str, int] = field(default_factory=dict)
    answered_by: dict[str, str] = field(default_factory=dict)  # final's reason and Server
    numbers: dict[str, str] = field(default_factory=dict)  # call-id: the number called
    _to: dict[str, int] = field(default_factory=dict)  # call-id: the port it went to
    _heard: set[str] = field(default_factory=set)  # call-ids with any answer
    _preferred: int = 0  # where new calls go (asterisk_port until a failover)
    _endpoint: UdpEndpoint | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._endpoint = await bind_udp(self.host, self.port)
        self._task = asyncio.create_task(self._read())
        self._preferred = self.asterisk_port

    def close(self) -> None:
        close_udp(self._endpoint, self._task)

    def invite(self, number: str) -> None:
        call_id = secrets.token_hex(8)
        self.numbers[call_id] = number
        sdp = (
            f"v=0\r\no=- 1 1 IN IP4 {self.host}\r\ns=-\r\nc=IN IP4 {self.host}\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
        )
        self.sent[call_id] = time.time()
        self._to[call_id] = self._preferred
        self._send(self._request("INVITE", call_id, "", sdp), call_id)
        if self.fallback_port:
            asyncio.get_running_loop().call_later(
                self.failover_after, self._fail_over, call_id, sdp
            )

    def _fail_over(self, call_id: str, sdp: str) -> None:
        if call_id in self._heard or self._endpoint is None:
            return
        went = self._to[call_id]
        other = self.fallback_port if went == self.asterisk_port else self.asterisk_port
        self._preferred = self._to[call_id] = other
        self.retried += 1
        self._send(self._request("INVITE", call_id, "", sdp), call_id)

    async def run(
        self, numbers: list[str], rate: float, until: asyncio.Event, at_least: float
    ) -> None:
        """Call the numbers in turn, `rate` a second, for `at_least` seconds and until
        `until` is set (bounded: at most 10 times `at_least`)."""
        started = time.monotonic()
        k = 0
        while time.monotonic() - started < at_least or not until.is_set():
            if time.monotonic() - started > 10 * at_least:
                break
            self.invite(numbers[k % len(numbers)])
            k += 1
            await asyncio.sleep(max(0.0, started + k / rate - time.monotonic()))

    @contextlib.asynccontextmanager
    async def calling(
        self, numbers: list[str], rate: float, at_least: float
    ) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """Started and calling the numbers (`run`) inside the block, which gets `finish`:
        it stops the calls once `at_least` seconds have passed and waits for their
        answers. At the end, whatever happened, the calls stop and the socket closes."""
        await self.start()
        stop = asyncio.Event()
        task = asyncio.create_task(self.run(numbers, rate, stop, at_least))

        async def finish() -> None:
            stop.set()
            await task
            await self.settle()

        try:
            yield finish
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.close()

    async def settle(self, within: float = 10) -> None:
        """Until every call rang or has its final answer (or `within` seconds passed)."""
        deadline = time.monotonic() + within
        while self.unanswered():
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)

    def misrouted(self) -> list[tuple[str, str, float]]:
        """(number, its final answer, when sent) of calls answered >= 300 before they
        rang: they reached no phone."""
        return [
            (self.numbers[c], f"{status} {self.answered_by[c]}", self.sent[c])
            for c, status in self.final.items()
            if status >= 300 and c not in self.rang
        ]

    def unanswered(self) -> list[str]:
        return [c for c in self.sent if c not in self.rang and c not in self.final]

    def _request(self, method: str, call_id: str, to_tag: str, body: str = "") -> str:
        number = self.numbers[call_id]
        to = f"<sip:{number}@{self.asterisk_host}>" + (f";tag={to_tag}" if to_tag else "")
        kind = "Content-Type: application/sdp\r\n" if body else ""
        port = self._to.get(call_id, self.asterisk_port)
        # A call sent again elsewhere is a new transaction (a branch of its own); its
        # CANCEL and ACK carry the branch of the INVITE they belong to.
        branch = ("r" if port != self.asterisk_port else "") + call_id
        return (
            f"{method} sip:{number}@{self.asterisk_host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:carrier@{self.host}>;tag=c{call_id}\r\n"
            f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n"
            f"Contact: <sip:carrier@{self.host}:{self.port}>\r\n{kind}"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        )

    def _send(self, text: str, call_id: str) -> None:
        assert self._endpoint and self._endpoint.transport
        port = self._to.get(call_id, self.asterisk_port)
        self._endpoint.transport.sendto(text.encode(), (self.asterisk_host, port))

    async def _read(self) -> None:
        assert self._endpoint
        while True:
            text, _ = await self._endpoint.queue.get()
            first, headers = parse_headers(text)
            call_id = headers.get("call-id", "")
            if not first.startswith("SIP/2.0") or call_id not in self.sent:
                continue
            status, method = int(first.split()[1]), headers.get("cseq", "").split()[-1]
            if method != "INVITE":
                continue
            self._heard.add(call_id)
            if status in (180, 183) and call_id not in self.rang:
                self.rang[call_id] = time.time()
                self._send(self._request("CANCEL", call_id, ""), call_id)
            elif status >= 200 and call_id not in self.final:
                self.final[call_id] = status
                server = headers.get("server") or headers.get("user-agent", "")
                self.answered_by[call_id] = f"{first.split(' ', 2)[-1]} from {server!r}"
                if status >= 300:
                    to_tag = headers.get("to", "").partition("tag=")[2]
                    self._send(self._request("ACK", call_id, to_tag), call_id)


@dataclass
class RingingPhone:
    """A registered phone that rings for every call (180) until it is cancelled (200 to
    the CANCEL, 487 to the INVITE). Register it first from the same port (sipp), or
    with `register` from its own socket while it rings (a phone refreshing its
    registration through the router)."""

    port: int
    invites: int = 0
    _endpoint: UdpEndpoint | None = None
    _task: asyncio.Task[None] | None = None
    _answers: dict[str, asyncio.Queue[tuple[int, dict[str, str]]]] = field(
        default_factory=dict
    )  # call-id of a REGISTER: its answers

    async def register(
        self, proxy: tuple[str, int], user: str, password: str, domain: str,
        expires: int = 300, within: float = 3.0,
    ) -> int:  # fmt: skip
        """REGISTER user@domain through the outbound proxy, with digest auth on a 401;
        the final answer's status (0: none within `within` seconds)."""
        call_id, tag = secrets.token_hex(8), secrets.token_hex(4)
        answers: asyncio.Queue[tuple[int, dict[str, str]]] = asyncio.Queue()
        self._answers[call_id] = answers
        authorization = ""
        try:
            for cseq in (1, 2):
                request = (
                    f"REGISTER sip:{domain} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)}"
                    ";rport\r\n"
                    f"From: <sip:{user}@{domain}>;tag={tag}\r\nTo: <sip:{user}@{domain}>\r\n"
                    f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
                    f"Contact: <sip:{user}@127.0.0.1:{self.port}>\r\n{authorization}"
                    f"Max-Forwards: 70\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
                )
                assert self._endpoint and self._endpoint.transport
                self._endpoint.transport.sendto(request.encode(), proxy)
                deadline = time.monotonic() + within
                while True:
                    left = deadline - time.monotonic()
                    try:
                        status, headers = await asyncio.wait_for(answers.get(), max(left, 0.001))
                    except TimeoutError:
                        return 0
                    if status >= 200:
                        break
                if status != 401 or cseq == 2:
                    return status
                authorization = _digest(headers.get("www-authenticate", ""), user, password,
                                        f"sip:{domain}")  # fmt: skip
        finally:
            del self._answers[call_id]
        return 0

    async def start(self) -> None:
        self._endpoint = await bind_udp("127.0.0.1", self.port)
        self._task = asyncio.create_task(self._serve())

    def close(self) -> None:
        close_udp(self._endpoint, self._task)

    def _reply(self, text: str, status: str, addr: tuple[str, int], method: str = "") -> None:
        assert self._endpoint and self._endpoint.transport
        _, headers = parse_headers(text)
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")
        vias = [line for line in head if line.lower().startswith(("via:", "v:"))]
        cseq = headers.get("cseq", "")
        if method:
            cseq = f"{cseq.split()[0]} {method}"
        to = headers.get("to", "")
        if "tag=" not in to:
            to += f";tag=p{headers.get('call-id', '')[:8]}"
        reply = (
            f"SIP/2.0 {status}\r\n" + "\r\n".join(vias) + "\r\n"
            f"From: {headers.get('from', '')}\r\nTo: {to}\r\n"
            f"Call-ID: {headers.get('call-id', '')}\r\nCSeq: {cseq}\r\n"
            f"Contact: <sip:phone@127.0.0.1:{self.port}>\r\nContent-Length: 0\r\n\r\n"
        )
        self._endpoint.transport.sendto(reply.encode(), addr)

    async def _serve(self) -> None:
        assert self._endpoint
        while True:
            text, addr = await self._endpoint.queue.get()
            first, headers = parse_headers(text)
            if first.startswith("SIP/2.0 ") and headers.get("call-id") in self._answers:
                self._answers[headers["call-id"]].put_nowait((int(first.split()[1]), headers))
            elif first.startswith("INVITE "):
                self.invites += 1
                self._reply(text, "180 Ringing", addr)
            elif first.startswith("CANCEL "):
                self._reply(text, "200 OK", addr)
                self._reply(text, "487 Request Terminated", addr, method="INVITE")
            elif first.startswith(("OPTIONS ", "NOTIFY ", "BYE ")):
                self._reply(text, "200 OK", addr)


def _digest(challenge: str, user: str, password: str, uri: str) -> str:
    """The Authorization header answering a 401's digest challenge (MD5, qop auth)."""
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"REGISTER:{uri}")
    header = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}"'
    if "auth" in fields.get("qop", "").split(","):
        cnonce = secrets.token_hex(8)
        response = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        header += f', qop=auth, nc=00000001, cnonce="{cnonce}"'
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    header += f', response="{response}", algorithm=MD5'
    if "opaque" in fields:
        header += f', opaque="{fields["opaque"]}"'
    return f"Authorization: {header}\r\n"
