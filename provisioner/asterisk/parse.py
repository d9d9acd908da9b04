"""The one reader of the files we generate: which kind a file is, the contexts of the
dialplan files as pbx_config merges them, the sections of the pjsip files, and from
those the endpoints, contexts and extensions a config defines. The planner, the
verifier of a round and the drift check all read through here."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field


def kind_of(path: str) -> str:
    """ "pjsip" or "dialplan": the folder of the output directory a file is in."""
    return path.split("/", 1)[0]


def of_kind(config: dict[str, str], kind: str) -> dict[str, str]:
    return {path: text for path, text in config.items() if kind_of(path) == kind}


def dialplan_texts(config: dict[str, str]) -> list[str]:
    return [text for _path, text in sorted(of_kind(config, "dialplan").items())]


# --- Dialplan ------------------------------------------------------------------------

HINT = "hint"


class NotOurs(ValueError):
    """A dialplan line this reader does not know: the round falls back to a full reload."""


@dataclass
class Context:
    steps: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    includes: set[str] = field(default_factory=set)


Dialplan = dict[str, Context]

_LINE = re.compile(r"^(exten|same|include)\s*=>\s*(.*)$")


def _app(text: str) -> tuple[str, str]:
    """`Dial(PJSIP/a,30,tT)` -> ("Dial", "PJSIP/a,30,tT"), as pbx_config splits it."""
    name, paren, rest = text.partition("(")
    if not paren:
        return name.strip(), ""
    return name.strip(), rest[: rest.rfind(")")] if ")" in rest else rest


def parse_dialplan(texts: Iterable[str]) -> Dialplan:
    """Contexts of the given files, merged as pbx_config merges them (a context named
    in several files is one context)."""
    plan: Dialplan = {}
    for text in texts:
        context: Context | None = None
        extension, last = "", 0
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(";"):
                continue
            if line.startswith("[") and line.endswith("]"):
                context = plan.setdefault(line[1:-1], Context())
                continue
            match = _LINE.match(line)
            if match is None or context is None:
                raise NotOurs(f"unexpected dialplan line: {line[:80]!r}")
            kind, rest = match.groups()
            if kind == "include":
                context.includes.add(rest.strip())
                continue
            if kind == "exten":
                extension, _, rest = rest.partition(",")
            priority, _, action = rest.partition(",")
            if priority == HINT:
                context.steps[(extension, HINT)] = (action, "")
                continue
            if priority == "n":
                last += 1
            elif priority.isdigit():
                last = int(priority)
            else:
                raise NotOurs(f"unexpected priority {priority!r} in {line[:80]!r}")
            context.steps[(extension, str(last))] = _app(action)
    return plan


def dialplan_in(config: dict[str, str]) -> dict[str, set[str]]:
    """The contexts the dialplan files of a config define, with their extensions."""
    return {
        name: {extension for extension, _priority in context.steps}
        for name, context in parse_dialplan(dialplan_texts(config)).items()
    }


# --- PJSIP ---------------------------------------------------------------------------


def sections(text: str) -> dict[tuple[str, str], str]:
    """(name, type) -> the section's text (up to the next section)."""
    found: dict[tuple[str, str], str] = {}
    starts = [m.start() for m in re.finditer(r"^\[", text, re.M)] + [len(text)]
    for start, end in itertools.pairwise(starts):
        body = text[start:end]
        name = body[1 : body.index("]")]
        kind = re.search(r"^type\s*=\s*(\w+)", body, re.M)
        lines = [line for line in body.splitlines() if line and not line.startswith(";")]
        found[(name, kind.group(1) if kind else "")] = "\n".join(lines)
    return found


def endpoints_in(config: dict[str, str]) -> set[str]:
    """The endpoints the pjsip files of a config define."""
    return {
        name
        for text in of_kind(config, "pjsip").values()
        for name, kind in sections(text)
        if kind == "endpoint"
    }
