"""Reading JSON request bodies: the right content type, an object, known fields only."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from aiohttp import web

from provisioner.domain.errors import InvalidInput, ProblemError

# Unicode categories no text field may hold: they end lines (Zl, Zp, and Cc's CR, LF,
# NEL), hide or reorder text (Cf: right-to-left override, zero-width characters) or are
# no text at all (Cs, lone surrogates). Mails, pages and config never see them.
INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


class UnsupportedMediaType(ProblemError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class Body:
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def only(self, *allowed: str) -> Body:
        for name in self._data:
            if name not in allowed:
                raise InvalidInput(f"unknown field {name!r}", field=name, code="unknown_field")
        return self

    def text(self, name: str, *, max_length: int = 200, prefix: str = "") -> str:
        value = self._data.get(name)
        if value is None:
            raise InvalidInput(
                f"{prefix}{name} is required", field=prefix + name, code="missing_field"
            )
        return self._check(prefix + name, value, max_length)

    def optional_text(self, name: str, *, max_length: int = 200) -> str | None:
        value = self._data.get(name)
        return None if value is None else self._check(name, value, max_length)

    def flag(self, name: str, *, prefix: str = "") -> bool:
        """An optional boolean, false when absent."""
        value = self._data.get(name, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"{prefix}{name} must be true or false", field=prefix + name,
                               code="invalid_type")  # fmt: skip
        return value

    def optional_object(self, name: str) -> Body | None:
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidInput(f"{name} must be an object", field=name, code="invalid_type")
        return Body(value)

    def integer(self, name: str) -> int:
        value = self._data.get(name)
        if value is None:
            raise InvalidInput(f"{name} is required", field=name, code="missing_field")
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInput(f"{name} must be a whole number", field=name, code="invalid_type")
        return value

    def text_list(self, name: str, *, max_items: int, max_length: int) -> list[str]:
        value = self._data.get(name)
        if value is None:
            raise InvalidInput(f"{name} is required", field=name, code="missing_field")
        if not isinstance(value, list) or len(value) > max_items:
            raise InvalidInput(
                f"{name} must be a list of at most {max_items}", field=name, code="invalid_type"
            )
        return [self._check(name, item, max_length) for item in value]

    @staticmethod
    def _check(name: str, value: Any, max_length: int) -> str:
        if not isinstance(value, str):
            raise InvalidInput(f"{name} must be a string", field=name, code="invalid_type")
        if len(value) > max_length:
            raise InvalidInput(
                f"{name} is longer than {max_length} characters", field=name, code="too_long"
            )
        if any(unicodedata.category(c) in INVISIBLE for c in value):
            raise InvalidInput(
                f"{name} holds control, format, separator or surrogate characters",
                field=name,
            )
        return value


async def read_json(request: web.Request, *, allow_empty: bool = False) -> Body:
    raw = await request.read()
    if allow_empty and not raw.strip():
        return Body({})
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProblemError("the body is not valid JSON", code="malformed_json") from None
    except RecursionError:
        raise ProblemError("the body is nested too deeply", code="malformed_json") from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_body")
    return Body(data)
