"""Handlers of the portal API (/v1): parse, call the use case, serialize."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from provisioner.api import keys, serialize
from provisioner.api.auth import API_KEY_ROLE
from provisioner.api.body import read_json
from provisioner.api.unit_of_work import SHOWN_ONCE, UNIT
from provisioner.asterisk.ami import AsteriskUnavailable
from provisioner.domain import rules
from provisioner.domain.errors import AsteriskDown, Forbidden, InvalidInput, NotFound
from provisioner.service import accounts, assignments, blocks, config, console, events, pbx, usage


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def put_account(request: web.Request) -> web.Response:
    body = await read_json(request)
    account, created = await accounts.put_account(
        request[UNIT],
        request.match_info["customer"],
        name=body["name"],
        email=body["email"],
        language=body["language"],
    )
    return _json(serialize.account(account), 201 if created else 200)


async def get_account(request: web.Request) -> web.Response:
    account = await accounts.get_account(request[UNIT], request.match_info["customer"])
    return _json(serialize.account(account))


async def put_pbx(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True)
    pbx, created = await accounts.put_pbx(
        request[UNIT], request.match_info["customer"], node=body.get("node")
    )
    return _json(serialize.pbx(pbx, request[UNIT].policy.phone_domain), 201 if created else 200)


async def delete_pbx(request: web.Request) -> web.Response:
    await accounts.delete_pbx(request[UNIT], request.match_info["customer"])
    return web.Response(status=204)


async def get_pbx(request: web.Request) -> web.Response:
    pbx = await accounts.get_pbx(request[UNIT], request.match_info["customer"])
    return _json(serialize.pbx(pbx, request[UNIT].policy.phone_domain))


async def put_block(request: web.Request) -> web.Response:
    body = await read_json(request)
    trunk = body.get("trunk")
    credentials = None
    if trunk is not None:
        credentials = blocks.TrunkCredentials(
            trunk["username"], trunk["password"], trunk.get("register", False)
        )
    unit = request[UNIT]
    row, created = await blocks.put_block(
        unit,
        request.match_info["customer"],
        request.match_info["block_id"],
        number=body["number"],
        range_text=body.get("range"),
        mode=body["mode"],
        trunk=credentials,
        default_target=body.get("default_target"),
    )
    return _json(serialize.block(row, await blocks.used_by(unit, row)), 201 if created else 200)


async def list_blocks(request: web.Request) -> web.Response:
    unit = request[UNIT]
    rows = await blocks.list_blocks(unit, request.match_info["customer"])
    return _json({"blocks": [serialize.block(r, await blocks.used_by(unit, r)) for r in rows]})


async def set_block_mode(request: web.Request) -> web.Response:
    body = await read_json(request)
    unit = request[UNIT]
    row = await blocks.set_mode(unit, request.match_info["block_id"], body["mode"])
    return _json(serialize.block(row, await blocks.used_by(unit, row)))


async def create_assignment(request: web.Request) -> web.Response:
    body = await read_json(request)
    assignment = await assignments.create(
        request[UNIT], request.match_info["block_id"], body["target_customer"]
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


async def put_extension(request: web.Request) -> web.Response:
    body = await read_json(request)
    unit = request[UNIT]
    result = await pbx.put_extension(
        unit,
        request.match_info["customer"],
        request.match_info["ext"],
        name=body["name"],
        site_block=body["site_block"],
        did=body.get("did"),
        pickup_group=body.get("pickup_group"),
    )
    view = await pbx.view_of(unit, request.match_info["customer"])
    data = serialize.extension(result.extension, view)
    if result.password is not None:
        # Shown once: the portal hands it to the phone's provisioning; we keep only its
        # hash, and an idempotent replay gets it from the sealed stored response.
        data["sip_password"] = result.password
    response = _json(data, 201 if result.created else 200)
    response[SHOWN_ONCE] = ("sip_password",)
    return response


async def delete_extension(request: web.Request) -> web.Response:
    m = request.match_info
    await pbx.delete_extension(request[UNIT], m["customer"], m["ext"])
    return web.Response(status=204)


async def delete_ring_group(request: web.Request) -> web.Response:
    m = request.match_info
    await pbx.delete_ring_group(request[UNIT], m["customer"], m["ext"])
    return web.Response(status=204)


async def list_extensions(request: web.Request) -> web.Response:
    rows, view = await pbx.list_extensions(request[UNIT], request.match_info["customer"])
    return _json({"extensions": [serialize.extension(e, view) for e in rows]})


async def put_used_block(request: web.Request) -> web.Response:
    body = await read_json(request)
    m = request.match_info
    target = await pbx.set_default_target(
        request[UNIT], m["customer"], m["block_id"], body["default_target"]
    )
    return _json({"block_id": m["block_id"], "default_target": target})


async def put_ring_group(request: web.Request) -> web.Response:
    body = await read_json(request)
    group, created = await pbx.put_ring_group(
        request[UNIT],
        request.match_info["customer"],
        request.match_info["ext"],
        name=body["name"],
        strategy=body["strategy"],
        members=body["members"],
        ring_seconds=body["ring_seconds"],
    )
    return _json(serialize.ring_group(group), 201 if created else 200)


async def list_ring_groups(request: web.Request) -> web.Response:
    groups = await pbx.list_ring_groups(request[UNIT], request.match_info["customer"])
    return _json({"ring_groups": [serialize.ring_group(g) for g in groups]})


async def get_config(request: web.Request) -> web.Response:
    found = await config.current(request[UNIT], request.match_info["customer"])
    # Engineers see where an apply failed; the portal, which shows it to customers, sees
    # the reason without the platform's internal addresses.
    return _json(serialize.config(found, internal=request[API_KEY_ROLE] == "engineer"))


async def get_config_diff(request: web.Request) -> web.Response:
    text = await config.diff(
        request[UNIT],
        request.match_info["customer"],
        _revision_param(request, "from"),
        _revision_param(request, "to"),
    )
    return web.Response(text=text, content_type="text/x-diff")


def _revision_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not rules.DIGITS.fullmatch(raw) or len(raw) > 9:
        raise InvalidInput(f"{name} must be a revision number", field=name)
    return int(raw)


def _page(request: web.Request, most: int) -> tuple[str, int]:
    """A cursor page's query: `after` (as given: the answer's `next` when nothing is new)
    and `limit` (1 to `most`, 100 by default)."""
    after = request.query.get("after", "0")
    if not rules.DIGITS.fullmatch(after) or len(after) > 18:
        raise InvalidInput("after must be a cursor from an earlier answer", field="after")
    limit = request.query.get("limit", "100")
    if not rules.DIGITS.fullmatch(limit) or len(limit) > 4 or not 1 <= int(limit) <= most:
        raise InvalidInput(f"limit must be 1 to {most}", field="limit")
    return after, int(limit)


async def event_feed(request: web.Request) -> web.Response:
    """Events after a cursor, oldest first; `next` is the cursor to ask with next time
    (the same as the last event's, or the one given when there is nothing new)."""
    after, limit = _page(request, most=500)
    found = await events.feed(request[UNIT], int(after), limit)
    return _json({
        "events": [e.payload() for e in found],
        "next": str(found[-1].position) if found else after,
    })  # fmt: skip


async def check_node(request: web.Request) -> web.Response:
    """The drift check of a node: the operator's view, refused to anyone acting for a
    customer."""
    if request[UNIT].actor.acting_customer is not None:
        raise Forbidden("nodes are the operator's, not a customer's", code="operator_only")
    settings = request.app[keys.SETTINGS]
    node = settings.node(request.match_info["node"])
    if node is None:
        raise NotFound(f"no node {request.match_info['node']}", code="node_not_found")
    try:
        pbxes, problems = await console.check_node(
            request.app[keys.POOL], settings, node, router=True
        )
    except AsteriskUnavailable as exc:
        raise AsteriskDown(str(exc)) from None
    return _json(serialize.node_check(node.name, pbxes, problems))


def _moment(request: web.Request, name: str) -> datetime | None:
    """A query's date-time (ISO 8601 with a time zone; a date alone is its start, UTC)."""
    raw = request.query.get(name, "")
    if raw == "":
        return None
    problem = f"{name} must be an ISO 8601 date-time with its zone, e.g. 2026-12-01T00:00:00Z"
    if len(raw) > 40:
        raise InvalidInput(problem, field=name)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(problem, field=name) from None
    if len(raw) == 10:  # a date
        return moment.replace(tzinfo=UTC)
    if moment.tzinfo is None:
        raise InvalidInput(problem, field=name)
    return moment


def _period(request: web.Request) -> usage.Period:
    return usage.Period.of(_moment(request, "from"), _moment(request, "to"), request[UNIT].now)


def _wants_csv(request: web.Request) -> bool:
    return "text/csv" in request.headers.get("Accept", "")


def _csv(header: tuple[str, ...], rows: list[dict[str, Any]], **headers: str) -> web.Response:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8",
                        headers=headers)  # fmt: skip


async def account_usage(request: web.Request) -> web.Response:
    """What an account's blocks and its PBX used in a period: calls, answered, billsec
    per block, owner, using PBX and direction."""
    customer, period = request.match_info["customer"], _period(request)
    rows = await usage.usage(request[UNIT], customer, period)
    if _wants_csv(request):
        return _csv(serialize.USAGE_FIELDS, [serialize.usage_row(r) for r in rows])
    return _json(serialize.usage(customer, period, rows))


async def account_calls(request: web.Request) -> web.Response:
    """The account's call records in a period, oldest import first, a page at a time:
    `next` is the cursor to ask with for the next page (the one given: nothing more)."""
    customer, period = request.match_info["customer"], _period(request)
    after, limit = _page(request, most=1000)
    found = await usage.call_list(request[UNIT], customer, period, int(after), limit)
    internal = request[API_KEY_ROLE] == "engineer"
    shown = [serialize.call(c, internal=internal) for c in found]
    following = str(found[-1].id) if found else after
    if _wants_csv(request):
        fields = (*serialize.CALL_FIELDS, "node") if internal else serialize.CALL_FIELDS
        return _csv(fields, shown, **{"X-Next-Cursor": following})
    return _json({
        "customer": customer, "from": serialize.when(period.start),
        "to": serialize.when(period.end), "calls": shown, "next": following,
    })  # fmt: skip
