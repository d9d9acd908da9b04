"""Reading back the files we generate: which endpoints, contexts and extensions they
define. The apply round verifies against this, and so does the drift check."""

from __future__ import annotations

import re

_SECTION = re.compile(r"^\[([^\]\n]+)\]", re.M)
_EXTEN = re.compile(r"^exten\s*=>\s*([^,\s]+),", re.M)
_ENDPOINT = re.compile(r"^\[([^\]\n]+)\]\ntype = endpoint$", re.M)


def endpoints_in(config: dict[str, str]) -> set[str]:
    """The endpoints the pjsip files of a config define."""
    return {e for path, text in config.items() if path.startswith("pjsip/")
            for e in _ENDPOINT.findall(text)}  # fmt: skip


def dialplan_in(config: dict[str, str]) -> dict[str, set[str]]:
    """The contexts the dialplan files of a config define, with their extensions."""
    plan: dict[str, set[str]] = {}
    for path, text in config.items():
        if path.startswith("dialplan/"):
            parts = _SECTION.split(text)
            for name, body in zip(parts[1::2], parts[2::2], strict=True):
                plan.setdefault(name, set()).update(_EXTEN.findall(body))
    return plan
