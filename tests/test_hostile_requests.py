"""Requests as an attacker or a broken client sends them: always a 4xx problem, never a
500, never a held database connection, and the database unchanged."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from aiohttp.test_utils import TestClient
from conftest import PORTAL_KEY, Api, Inbox, snapshot
from helpers import BLOCK, OTHER, OWNER, TARGET, request_assignment, scene
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from provisioner.api import middleware
from provisioner.api.system import openapi_document

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
    deadline = time.monotonic() + 5
    while text not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        await asyncio.sleep(0.05)


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
