"""Requests as an attacker or a broken client sends them: always a 4xx problem, never a
500, never a held database connection, and the database unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fixtures_db import snapshot
from fixtures_mail import Inbox
from fixtures_service import PORTAL_KEY, Api, FakeClock
from helpers import BLOCK, OTHER, OWNER, TARGET, request_assignment, scene
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import wait_until
from yarl import URL

from provisioner.api import middleware
from provisioner.api.serialize import without_addresses
from provisioner.api.serving import server_options
from provisioner.api.system import openapi_document
from provisioner.app import create_app
from provisioner.settings import Settings

ACCOUNT = {"name": "Neu GmbH", "email": "neu@example.com", "language": "de"}


async def raw_request(client: TestClient[Any, Any], head: bytes, body: bytes = b"") -> bytes:
    """Bytes on the wire, as no well-behaved client library would send them."""
    port = client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    return answer


async def test_raw_bytes_in_the_api_key_are_an_unknown_key(api: Api) -> None:
    answer = await raw_request(
        api.client,
        b"GET /v1/accounts/K100200 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xe6\xff\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"application/problem+json" in answer and b"unknown_api_key" in answer


@pytest.mark.parametrize("with_key", [False, True])
async def test_deeply_nested_json_is_malformed(
    api: Api, db: psycopg.Connection[Any], with_key: bool
) -> None:
    before = snapshot(db)
    headers = {"Content-Type": "application/json"}
    if with_key:
        headers["Idempotency-Key"] = "deep"
    await api.problem(
        400, "malformed_json", "PUT", "/v1/accounts/K9", data="[" * 30000, headers=headers
    )
    assert snapshot(db) == before


# Line and paragraph separators, NEL, right-to-left override, DEL, zero-width space, a
# lone surrogate: none may reach a mail, a page or a config file.
INVISIBLE = ["\u2028", "\u2029", "\u0085", "\u202e", "\u007f", "\u200b", "\ud800"]


@pytest.mark.parametrize("char", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
async def test_invisible_characters_in_text_are_refused(
    api: Api, db: psycopg.Connection[Any], char: str
) -> None:
    await scene(api)
    before = snapshot(db)
    name = f"Inj GmbH{char}IMPORTANT: confirm at http://evil.example/"
    problem = await api.problem(
        422, "invalid_field", "PUT", "/v1/accounts/K9", {**ACCOUNT, "name": name}
    )
    assert problem["field"] == "name"
    await api.problem(
        422, "invalid_field", "PUT", f"/v1/accounts/{TARGET}/pbx/extensions/100",
        {"name": "Anna", "site_block": f"ber{char}main"},
    )  # fmt: skip
    assert snapshot(db) == before


async def test_a_lone_surrogate_in_the_path_is_a_problem_too(api: Api) -> None:
    response = await api.call("GET", "/v1/blocks/%ED%A0%80x/assignment")
    assert 400 <= response.status < 500
    assert response.content_type == "application/problem+json"
    assert "request_id" in await response.json(content_type=None)


async def test_slow_bodies_hold_no_database_connection(
    api: Api, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 clients announce 100 bytes and send 9: each ends with 408 after the body
    timeout; meanwhile the service answers everyone else and no connection of the pool
    idles in a transaction."""
    monkeypatch.setattr(middleware, "BODY_TIMEOUT", 1.5)
    head = (
        f"PUT /v1/accounts/K200 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PORTAL_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
    ).encode()
    slow = [asyncio.create_task(raw_request(api.client, head, b'{"name": ')) for _ in range(12)]
    await asyncio.sleep(0.5)
    started = time.monotonic()
    assert (await api.call("GET", "/readyz", key="")).status == 200
    await api.ok("PUT", "/v1/accounts/K9", ACCOUNT)
    assert time.monotonic() - started < 1.0
    idle = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'"
        " AND datname = current_database()"
    ).fetchone()
    assert idle == (0,)
    for answer in await asyncio.gather(*slow):
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request_timeout" in answer


async def test_a_client_that_goes_away_is_no_server_error(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await go_away_mid_body(
        api,
        f"PUT /v1/accounts/K200 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PORTAL_KEY}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"na',
    )
    await logged(caplog, "client went away")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def go_away_mid_body(api: Api, head: str) -> None:
    """Send a request whose body never arrives in full, then close the connection."""
    port = api.client.server.port
    assert port is not None
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode())
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    await wait_until(lambda: text in caplog.text, f"{text!r} not logged", 5)


async def test_confirm_links_store_no_idempotency_keys(
    api: Api, db: psycopg.Connection[Any]
) -> None:
    for n in range(50):
        response = await api.client.post(f"/confirm/bogus{n}", headers={"Idempotency-Key": f"k{n}"})
        assert response.status == 404
    assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (0,)


async def test_an_unknown_node_is_refused(api: Api, db: psycopg.Connection[Any]) -> None:
    await api.ok("PUT", "/v1/accounts/K9", ACCOUNT)
    before = snapshot(db)
    await api.problem(422, "unknown_node", "PUT", "/v1/accounts/K9/pbx", {"node": "nosuchnode"})
    assert snapshot(db) == before
    assert (await api.ok("PUT", "/v1/accounts/K9/pbx", {"node": "default"}))["node"] == "default"


async def test_customer_numbers_differing_in_case_cannot_both_have_a_pbx(api: Api) -> None:
    await api.ok("PUT", "/v1/accounts/k100", ACCOUNT)
    await api.ok("PUT", "/v1/accounts/K100", ACCOUNT)
    await api.ok("PUT", "/v1/accounts/k100/pbx")
    await api.problem(409, "pbx_name_taken", "PUT", "/v1/accounts/K100/pbx")


async def test_non_parties_learn_nothing_of_other_accounts_blocks(
    api: Api, inbox: Inbox, db: psycopg.Connection[Any]
) -> None:
    """OTHER acting: a block that exists and one that does not get the same answer."""
    await scene(api)
    assignment, _, _ = await request_assignment(api, inbox)
    as_other = {"X-Acting-Customer": OTHER}
    answers = []
    for block in (BLOCK, "no-such-block"):
        for method, path, body in (
            ("GET", f"/v1/blocks/{block}/assignment", None),
            ("DELETE", f"/v1/blocks/{block}/assignment", None),
            ("POST", f"/v1/blocks/{block}/assignment", {"target_customer": OTHER}),
            ("POST", f"/v1/blocks/{block}/mode", {"mode": "standard"}),
        ):
            response = await api.call(method, path, body, headers=as_other)
            problem = await response.json(content_type=None)
            answers.append((block, method, path.split("/")[-1], response.status, problem["code"]))
    existing = [a[1:3] + a[3:] for a in answers if a[0] == BLOCK]
    missing = [a[1:3] + a[3:] for a in answers if a[0] != BLOCK]
    assert existing == missing and {a[3] for a in answers} == {404}, answers
    for events_of in (assignment["id"], "00000000-0000-0000-0000-000000000000"):
        await api.problem(404, "assignment_not_found", "GET",
                          f"/v1/assignments/{events_of}/events", headers=as_other)  # fmt: skip
    # The parties still see it.
    for party in (OWNER, TARGET):
        await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment", headers={"X-Acting-Customer": party})


async def test_overlaps_name_only_the_customers_own_blocks(api: Api) -> None:
    await scene(api)
    problem = await api.problem(
        409, "numbers_overlap", "PUT", f"/v1/accounts/{OTHER}/blocks/mine",
        {"number": "+4989123456", "range": "10-19", "mode": "pbx"},
    )  # fmt: skip
    assert BLOCK not in problem["detail"] and "another account" in problem["detail"]
    problem = await api.problem(
        409, "numbers_overlap", "PUT", f"/v1/accounts/{OWNER}/blocks/again",
        {"number": "+4989123456", "range": "10-19", "mode": "pbx"},
    )  # fmt: skip
    assert BLOCK in problem["detail"]


async def test_block_ids_are_as_long_as_generated_names_allow(api: Api) -> None:
    from provisioner.render.view import BLOCK_ID_MAX, MAX_NAME, SLUG_MAX

    assert BLOCK_ID_MAX == MAX_NAME - SLUG_MAX - len("-trunk-") == 40
    await scene(api)
    body = {"number": "+4930123456", "range": "0-99", "mode": "pbx"}
    await api.problem(422, "invalid_block_id", "PUT",
                      f"/v1/accounts/{TARGET}/blocks/{'b' * 41}", body)  # fmt: skip
    await api.ok("PUT", f"/v1/accounts/{TARGET}/blocks/{'b' * 40}", body)


async def test_malformed_requests_log_no_error(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """A client's mistake is the client's: answered 4xx, and no ERROR line or traceback
    in the service's log."""
    caplog.set_level(logging.DEBUG)
    await api.ok("PUT", "/v1/accounts/K9", ACCOUNT)
    json_headers = {"Content-Type": "application/json"}
    for method, path, data, headers in (
        ("PUT", "/v1/accounts/K9", "{not json", json_headers),
        ("PUT", "/v1/accounts/K9", "[" * 30000, json_headers),
        ("PUT", "/v1/accounts/K9", "name=x", {"Content-Type": "text/plain"}),
        ("PUT", "/v1/accounts/K9", '{"name": 1}', json_headers),
        ("PUT", "/v1/accounts/K9/pbx", '{"node": "x/y"}', json_headers),
        ("GET", "/v1/accounts/K9/pbx/config/diff?from=x", None, {}),
        ("POST", "/v1/blocks/%ff%fe/mode", '{"mode": "pbx"}', json_headers),
        ("PUT", "/v1/accounts/K9", "x" * 70_000, json_headers),
    ):
        response = await api.call(method, path, data=data, headers=headers)
        assert 400 <= response.status < 500, (path, response.status, await response.text())
    answer = await raw_request(api.client, b"GARBAGE / HTTP/9.9\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 4") or answer.startswith(b"HTTP/1.0 4"), answer[:100]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


# --- Every path and query parameter, thrown odd characters at ---------------------------

# A body each schema accepts, so that the request gets as far as its path parameters.
BODIES: dict[str, Any] = {
    "AccountInput": ACCOUNT,
    "PbxInput": {},
    "BlockInput": {"number": "+4989123456", "range": "0-99", "mode": "pbx"},
    "ModeInput": {"mode": "pbx"},
    "AssignmentInput": {"target_customer": TARGET},
    "ExtensionInput": {"name": "Anna", "site_block": BLOCK},
    "UsedBlockInput": {"default_target": None},
    "RingGroupInput": {"name": "G", "strategy": "hunt", "members": ["100"], "ring_seconds": 20},
}
# What each parameter would be, were it not odd.
FINE = {
    "customer": TARGET, "block_id": BLOCK, "ext": "100", "node": "default",
    "assignment_id": "00000000-0000-4000-8000-000000000000", "token": "t" * 43,
    "after": "0", "limit": "10", "from": "1", "to": "2",
}  # fmt: skip


def operations() -> list[tuple[str, str, list[str], list[str], Any]]:
    """(method, path template, path parameters, query parameters, body) of every
    operation of the document (tests/test_contract.py keeps it equal to the routes)."""
    found = []
    for template, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            names = re.findall(r"{(\w+)}", template)
            query = [
                p["name"] for p in operation.get("parameters", [])
                if isinstance(p, dict) and p.get("in") == "query"
            ] + [
                p["name"] for p in item.get("parameters", [])
                if isinstance(p, dict) and p.get("in") == "query"
            ]  # fmt: skip
            body = None
            if "requestBody" in operation:
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                body = BODIES[ref.rsplit("/", 1)[1]]
            if names or query:
                found.append((method.upper(), template, names, query, body))
    return found


# Line ends (a `$` in a Python regex matches before a final newline), digits int() does
# not take or isdigit() does, format and separator characters, a NUL.
ODD = st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\x85", "\u202e", "\u200b", "\x00",
                       "\t", "²", "٣", "\uff11", "½", " ", "%", "/", "\\"])  # fmt: skip


@settings(
    max_examples=300, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(
    operation=st.sampled_from(operations()), which=st.integers(0, 9), odd=ODD,
    where=st.sampled_from(["end", "start", "alone", "middle"]),
)  # fmt: skip
async def test_odd_characters_in_any_parameter_are_a_4xx_and_log_no_error(
    api: Api,
    caplog: pytest.LogCaptureFixture,
    operation: tuple[str, str, list[str], list[str], Any],
    which: int,
    odd: str,
    where: str,
) -> None:
    method, template, names, query, body = operation
    params = names + query
    target = params[which % len(params)]
    fine = FINE[target]
    value = {"end": fine + odd, "start": odd + fine, "alone": odd,
             "middle": fine[:1] + odd + fine[1:]}[where]  # fmt: skip
    path = template
    for name in names:
        given_value = value if name == target else FINE[name]
        path = path.replace("{" + name + "}", quote(given_value, safe=""))
    if target in query:
        path += f"?{target}={quote(value, safe='')}"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        response = await api.client.request(
            method, URL(path, encoded=True), json=body,
            headers={"Authorization": f"Bearer {PORTAL_KEY}"},
        )  # fmt: skip
        text = await response.text()
    assert 400 <= response.status < 500, (method, path, response.status, text)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    assert all("\n" not in r.getMessage() for r in caplog.records)


async def test_a_forged_log_line_in_the_path_stays_on_its_own_line(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """Unauthenticated: a path with an encoded newline and a body that never arrives."""
    caplog.set_level(logging.INFO)
    forged = "2026-12-03 06:00:00,000 ERROR provisioner.api.middleware: FORGED"
    await go_away_mid_body(
        api,
        f"POST /v1/zz%0A{quote(forged)} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    await logged(caplog, "/v1/zz")
    assert not any(line.startswith("2026-12-03") for line in caplog.text.splitlines())
    assert all("\n" not in r.getMessage() for r in caplog.records)
    assert "/v1/zz\\n2026-12-03" in caplog.text


# --- Requests too malformed for a handler: aiohttp answers them itself ----------------

GET = b"GET /v1/accounts/K9 HTTP/1.1\r\nHost: x\r\n"
MALFORMED = {
    "nul in a header value": GET + b"X-A: a\x00b\r\n\r\n",
    "nul in a header name": GET + b"X-\x00A: b\r\n\r\n",
    "raw superscript in the query": b"GET /v1/events?after=\xc2\xb2 HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw arabic digit in the path": b"GET /v1/accounts/K\xd9\xa1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "obsolete line fold": GET + b"X-A: a\r\n b\r\n\r\n",
    "space before the colon": GET + b"X-A : b\r\n\r\n",
    "bad token in a header name": GET + b"X(A): b\r\n\r\n",
    "header without a colon": GET + b"XA\r\n\r\n",
    "request line over 8190 bytes": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8190 bytes": GET + b"X-A: " + b"a" * 9000 + b"\r\n\r\n",
    "header name over 8190 bytes": GET + b"X" * 9000 + b": a\r\n\r\n",
    "two content lengths": b"PUT /v1/accounts/K9 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}",
    "content length not a number": b"PUT /v1/accounts/K9 HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 2x\r\n\r\n{}",
    "negative content length": b"PUT /v1/accounts/K9 HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: -1\r\n\r\n{}",
    "chunked and content length": b"PUT /v1/accounts/K9 HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"PUT /v1/accounts/K9 HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "unknown transfer coding": b"PUT /v1/accounts/K9 HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: gzip\r\n\r\n{}",
    "bad http version": b"GET /v1/accounts/K9 HTTP/1.x\r\nHost: x\r\n\r\n",
    "a content coding aiohttp cannot decode": b"PUT /v1/accounts/K9 HTTP/1.1\r\nHost: x\r\n"
    b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
    "lone LF line ends in a second request": GET + b"\r\n" + b"GET / HTTP/1.1\nX-A: b\n\n",
    "a bad method after a good request": GET + b"\r\n" + b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
}  # fmt: skip


@pytest.mark.parametrize("head", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_request_is_a_400_and_one_info_line(
    api: Api, caplog: pytest.LogCaptureFixture, head: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await raw_request(api.client, head)
    statuses = re.findall(rb"HTTP/1\.[01] (\d{3})", answer)
    assert statuses and statuses[-1].startswith(b"4"), answer[:300]
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records), caplog.text
    if statuses[-1] == b"400" and b"Bad" not in head[:5]:
        assert [r.levelname for r in records if "malformed" in r.getMessage()] in (
            ["INFO"],
            [],  # a line aiohttp itself logs at DEBUG (a bad first method)
        ), caplog.text


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_body_that_is_not_what_its_content_encoding_says_is_a_400(
    api: Api, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture, coding: str
) -> None:
    before = snapshot(db)
    for key in (True, False):
        # aiohttp closes a connection whose body broke: each request on its own.
        headers = {"Content-Type": "application/json", "Content-Encoding": coding,
                   "Connection": "close"}  # fmt: skip
        if not key:
            headers["Authorization"] = ""
        response = await api.client.put("/v1/accounts/K9", data=b'{"name": "x"}', headers=headers)
        assert response.status in (400, 415), await response.text()
        assert response.content_type == "application/problem+json"
    assert snapshot(db) == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_json_key_given_twice_is_a_400(api: Api, db: psycopg.Connection[Any]) -> None:
    before = snapshot(db)
    problem = await api.problem(
        400, "malformed_json", "PUT", "/v1/accounts/K9",
        data='{"name": "A", "email": "a@b.example", "language": "de", "name": "B"}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert "'name'" in problem["detail"]
    assert snapshot(db) == before


async def test_an_idempotency_key_on_a_method_no_route_has_is_a_405(api: Api) -> None:
    await api.ok("PUT", "/v1/accounts/K9", ACCOUNT, headers={"Idempotency-Key": "k-1"})
    for method, path, status in (
        ("PATCH", "/v1/accounts/K9", 405),
        ("POST", "/v1/accounts/K9", 405),
        ("PUT", "/v1/nowhere", 404),
    ):
        response = await api.call(method, path, ACCOUNT, headers={"Idempotency-Key": "k-1"})
        assert response.status == status, (method, path, await response.text())
    # The key is still the first request's.
    replay = await api.call("PUT", "/v1/accounts/K9", ACCOUNT, headers={"Idempotency-Key": "k-1"})
    assert replay.headers.get("Idempotent-Replayed") == "true"


async def test_expect_continue_with_a_body_over_the_limit_is_a_413_at_once(api: Api) -> None:
    answer = await raw_request(
        api.client,
        b"PUT /v1/accounts/K9 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + PORTAL_KEY.encode() + b"\r\n"
        b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"100 Continue" not in answer and b"body_too_large" in answer


async def test_expect_continue_within_the_limit_goes_on(api: Api) -> None:
    body = json.dumps(ACCOUNT).encode()
    port = api.client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"PUT /v1/accounts/K9 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + PORTAL_KEY.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]


async def test_slow_headers_are_cut_off_after_the_header_timeout(
    settings: Settings, clock: FakeClock
) -> None:
    fast = replace(settings, listen=replace(settings.listen, header_timeout_seconds=1))
    server = TestServer(create_app(fast, clock=clock), host="127.0.0.1")
    await server.start_server(**server_options(fast))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(40):  # a byte every 0.1 s: 4 s of headers, were it let
            if reader.at_eof():
                break
            writer.write(b"X")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0.1)
        closed = await asyncio.wait_for(reader.read(), 5)
        elapsed = time.monotonic() - started
        writer.close()
        assert closed == b"" and elapsed < 2.5, (closed, elapsed)
    finally:
        await server.close()


# Names that show nothing: Hangul fillers, the blank Braille pattern, a variation
# selector, combining marks alone; and an RFC 2047 encoded word.
BLANK_NAMES = ["\u3164", "\u2800", "\u115f", "\u1160", "\uffa0", "\ufe0f", "\u0301\u0308",
               " \u3164 ", "\u2800\u2800"]  # fmt: skip


@pytest.mark.parametrize(
    "name", [*BLANK_NAMES, "Evil =?utf-8?q?=0D=0ABcc:_x@y.z?= GmbH"],
    ids=[*(f"U+{ord(n.strip()[0]):04X}" for n in BLANK_NAMES), "encoded-word"],
)  # fmt: skip
async def test_names_that_show_nothing_or_carry_encoded_words_are_refused(
    api: Api, db: psycopg.Connection[Any], name: str
) -> None:
    await scene(api)
    await api.ok("PUT", f"/v1/accounts/{TARGET}/blocks/ber",
                 {"number": "+4930123456", "range": "0-99", "mode": "pbx"})  # fmt: skip
    await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/100",
                 {"name": "Anna", "site_block": "ber"})  # fmt: skip
    before = snapshot(db)
    for method, path, body in (
        ("PUT", "/v1/accounts/K9", {**ACCOUNT, "name": name}),
        ("PUT", f"/v1/accounts/{TARGET}/pbx/extensions/101", {"name": name, "site_block": "ber"}),
        ("PUT", f"/v1/accounts/{TARGET}/pbx/ring-groups/600",
         {"name": name, "strategy": "hunt", "members": ["100"], "ring_seconds": 20}),
    ):  # fmt: skip
        problem = await api.problem(422, "invalid_field", method, path, body)
        assert problem["field"] == "name"
    assert snapshot(db) == before


async def test_a_block_id_of_another_account_says_nothing_of_it(api: Api) -> None:
    await scene(api)
    problem = await api.problem(
        409, "block_id_taken", "PUT", f"/v1/accounts/{OTHER}/blocks/{BLOCK}",
        {"number": "+4930555000", "range": "0-9", "mode": "pbx"},
        headers={"X-Acting-Customer": OTHER},
    )  # fmt: skip
    text = json.dumps(problem)
    assert OWNER not in text and "another account" not in text and "+49" not in text


def test_reasons_shown_to_customers_name_no_internal_address() -> None:
    reason = (
        "Asterisk at 10.20.0.7:5038 is unavailable: [Errno 111] Connect call failed"
        " ('127.0.0.1', 5038); router http://10.0.0.2:5071/RPC refused; [fd00::7]:5038;"
        " ast-node-3.internal:5038"
    )
    shown = without_addresses(reason)
    assert shown is not None
    for address in ("10.20.0.7", "127.0.0.1", "10.0.0.2", "fd00::7", "ast-node-3", "5038"):
        assert address not in shown, shown
    assert shown.startswith("Asterisk at (internal address) is unavailable")


async def test_health_probes_that_answer_well_leave_no_access_log_line(
    settings: Settings, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Compose asks /readyz every 2 s: those lines would bury the rest. A probe that
    fails, and every other request, is still logged."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    server = TestServer(create_app(settings, clock=clock), host="127.0.0.1")
    await server.start_server(**server_options(settings))
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/healthz", "/readyz", "/healthz", "/nowhere"):
                async with session.get(server.make_url(path)) as response:
                    await response.read()
    finally:
        await server.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 1 and '"GET /nowhere HTTP/1.1" 404' in lines[0], lines
