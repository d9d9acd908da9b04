"""Request bodies: JSON objects, validated against their route's schema in openapi.yaml.

The OpenAPI document is the one declaration of each body: its fields, which are required,
their types, lengths, patterns and enums, and (`x-code`) the problem code a field's rule
answers with where that is more telling than `invalid_field`. `read_json` looks up the
operation of the route aiohttp matched and validates with jsonschema, so what the portal
reads is what runs. Two things a schema cannot say are checked here or further in:
no string anywhere may hold control or format characters (below), and the domain rules
(a number's numbering plan, a block this PBX uses) are the services'.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema
import jsonschema.validators
from aiohttp import web
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from provisioner.api.system import openapi_document
from provisioner.domain.errors import InvalidInput, ProblemError

# Unicode categories no text field may hold: they end lines (Zl, Zp, and Cc's CR, LF,
# NEL), hide or reorder text (Cf: right-to-left override, zero-width characters) or are
# no text at all (Cs, lone surrogates). Mails, pages and config never see them.
INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

_DOCUMENT = "urn:provisioner:openapi"

# A JSON 5.0 is a JSON Schema "integer"; to us a whole number is written without a
# fraction (Python would carry 5.0 on as a float), and true is no number.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)

# Which rule is reported when several fail, and the codes that do not depend on the field.
_RANK = {"additionalProperties": 0, "required": 1, "type": 2, "maxLength": 3, "maxItems": 3}
_CODES = {
    "additionalProperties": "unknown_field",
    "required": "missing_field",
    "type": "invalid_type",
    "maxLength": "too_long",
    "maxItems": "too_long",
}


class UnsupportedMediaType(ProblemError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


@cache
def validators() -> dict[tuple[str, str], Any]:
    """(METHOD, path template) -> the validator of the operation's request body."""
    document = openapi_document()
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_DOCUMENT, resource)
    found = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            # The schema refers into the document; relative refs inside resolve there too.
            rooted = {"$ref": _DOCUMENT + schema["$ref"]}
            found[(method.upper(), path)] = _Validator(rooted, registry=registry)
    return found


async def read_json(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as its route's schema declares it, or the 4xx problem that says why not."""
    raw = await request.read()
    data: Any = {}
    if not (allow_empty and not raw.strip()):
        if request.content_type != "application/json":
            raise UnsupportedMediaType("send the body as application/json")
        try:
            data = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
        except DuplicateKey as exc:
            raise ProblemError(
                f"the body names the key {str(exc)!r} twice", code="malformed_json"
            ) from None
        except (ValueError, UnicodeDecodeError):
            raise ProblemError("the body is not valid JSON", code="malformed_json") from None
        except RecursionError:
            raise ProblemError("the body is nested too deeply", code="malformed_json") from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_body")
    for field, text in _strings(data, ""):
        if any(unicodedata.category(c) in INVISIBLE for c in text):
            raise InvalidInput(
                f"{field} holds control, format, separator or surrogate characters",
                field=field,
            )
    route = request.match_info.route.resource
    operation = (request.method, route.canonical if route else "")
    validator = validators().get(operation)
    if validator is None:  # a handler reads a body its route does not declare
        raise LookupError(f"openapi.yaml declares no request body for {operation}")
    errors = sorted(
        validator.iter_errors(data),
        key=lambda e: (_RANK.get(str(e.validator), 9), [str(p) for p in e.absolute_path]),
    )
    if errors:
        raise _problem(errors[0])
    return data


class DuplicateKey(Exception):
    """A JSON object names a key twice (json.loads would silently keep the last)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(key)
        found[key] = value
    return found


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _strings(inner, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _strings(inner, f"{where}[{index}]")


def _field(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(error: jsonschema.ValidationError) -> InvalidInput:
    """One failed rule as the problem the portal gets: the field, a stable code, and a
    detail that never echoes the value (it may be long, or a secret)."""
    rule, limit, schema = str(error.validator), error.validator_value, error.schema
    where = _field(error.absolute_path)
    if rule == "additionalProperties":
        known = schema.get("properties", {}) if isinstance(schema, dict) else {}
        name = sorted(str(k) for k in error.instance if k not in known)[0]
        field = f"{where}.{name}" if where else name
        return InvalidInput(f"unknown field {field!r}", field=field, code=_CODES[rule])
    if rule == "required":
        name = next(str(n) for n in limit if n not in error.instance)
        field = f"{where}.{name}" if where else name
        return InvalidInput(f"{field} is required", field=field, code=_CODES[rule])
    code = _CODES.get(rule) or (schema.get("x-code") if isinstance(schema, dict) else None)
    return InvalidInput(
        f"{where} {_broken(rule, limit)}", field=where, code=code or "invalid_field"
    )


def _broken(rule: str, limit: Any) -> str:
    if rule == "type":
        return f"must be of type {limit if isinstance(limit, str) else ' or '.join(limit)}"
    if rule == "enum":
        return f"must be one of {', '.join(map(str, limit))}"
    if rule == "uniqueItems":
        return "must not name an item twice"
    texts = {
        "maxLength": "is longer than {} characters",
        "minLength": "must have at least {} characters",
        "maxItems": "has more than {} items",
        "minItems": "must have at least {} items",
        "pattern": "must match {}",
        "minimum": "must be at least {}",
        "maximum": "must be at most {}",
    }
    return texts.get(rule, "breaks the rule " + rule).format(limit)
