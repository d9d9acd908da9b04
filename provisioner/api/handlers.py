"""Handlers of the portal API (/v1): parse, call the use case, serialize."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from provisioner.api import serialize
from provisioner.api.body import read_json
from provisioner.api.middleware import UNIT
from provisioner.service import accounts, assignments, blocks


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def put_account(request: web.Request) -> web.Response:
    body = (await read_json(request)).only("name", "email", "language")
    account, created = await accounts.put_account(
        request[UNIT],
        request.match_info["customer"],
        name=body.text("name"),
        email=body.text("email", max_length=254),
        language=body.text("language", max_length=2),
    )
    return _json(serialize.account(account), 201 if created else 200)


async def get_account(request: web.Request) -> web.Response:
    account = await accounts.get_account(request[UNIT], request.match_info["customer"])
    return _json(serialize.account(account))


async def put_pbx(request: web.Request) -> web.Response:
    (await read_json(request, allow_empty=True)).only()
    pbx, created = await accounts.put_pbx(request[UNIT], request.match_info["customer"])
    return _json(serialize.pbx(pbx), 201 if created else 200)


async def get_pbx(request: web.Request) -> web.Response:
    pbx = await accounts.get_pbx(request[UNIT], request.match_info["customer"])
    return _json(serialize.pbx(pbx))


async def put_block(request: web.Request) -> web.Response:
    body = (await read_json(request)).only("number", "range", "mode")
    unit = request[UNIT]
    row, created = await blocks.put_block(
        unit,
        request.match_info["customer"],
        request.match_info["block_id"],
        number=body.text("number", max_length=20),
        range_text=body.optional_text("range", max_length=9),
        mode=body.text("mode", max_length=10),
    )
    return _json(serialize.block(row, await blocks.used_by(unit, row)), 201 if created else 200)


async def list_blocks(request: web.Request) -> web.Response:
    unit = request[UNIT]
    rows = await blocks.list_blocks(unit, request.match_info["customer"])
    return _json({"blocks": [serialize.block(r, await blocks.used_by(unit, r)) for r in rows]})


async def set_block_mode(request: web.Request) -> web.Response:
    body = (await read_json(request)).only("mode")
    unit = request[UNIT]
    row = await blocks.set_mode(
        unit, request.match_info["block_id"], body.text("mode", max_length=10)
    )
    return _json(serialize.block(row, await blocks.used_by(unit, row)))


async def create_assignment(request: web.Request) -> web.Response:
    body = (await read_json(request)).only("target_customer")
    assignment = await assignments.create(
        request[UNIT],
        request.match_info["block_id"],
        body.text("target_customer", max_length=32),
    )
    return _json(serialize.assignment(assignment), 201)


async def get_assignment(request: web.Request) -> web.Response:
    assignment = await assignments.current(request[UNIT], request.match_info["block_id"])
    return _json(serialize.assignment(assignment))


async def reset_assignment(request: web.Request) -> web.Response:
    assignment = await assignments.reset(request[UNIT], request.match_info["block_id"])
    return _json(serialize.assignment(assignment))


async def assignment_events(request: web.Request) -> web.Response:
    found = await assignments.events(request[UNIT], request.match_info["assignment_id"])
    return _json({"events": [serialize.event(e) for e in found]})
