"""The README's table of settings, made from the declaration (a test keeps the two
equal, so a key changed in the declaration and not in the README fails)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from provisioner.settings import Secret
from provisioner.settings.load import declared_keys, is_section


def key_table() -> str:
    """The README's table of keys, made from the declaration (a test keeps them equal)."""

    def shown(default: Any) -> str:
        if default in ("", (), None, dataclasses.MISSING) or default == Secret(""):
            return "(empty)"
        text = str(default).lower() if isinstance(default, bool) else str(default)
        return f"`{text}`"

    def entry_keys(tp: Any) -> str:
        # A list of entries: its entry's keys, with defaults, from the entry's declaration.
        args = typing.get_args(tp)
        if typing.get_origin(tp) is not tuple or not is_section(args[0]):
            return ""
        listed = []
        for f in dataclasses.fields(args[0]):
            default = "" if f.default is dataclasses.MISSING else f" (default {shown(f.default)})"
            listed.append(f"`{f.name}`{default}: {f.metadata['doc'].rstrip('.')}")
        return " Each entry: " + "; ".join(listed) + ". As an env var: the list as YAML or JSON."

    rows = ["| key | env var | default | meaning |", "|---|---|---|---|"]
    for key in declared_keys():
        meaning = (key.doc + entry_keys(key.hint)).replace("|", "\\|")
        if typing.get_origin(key.hint) is tuple and not entry_keys(key.hint):
            meaning += " As an env var: the list as YAML or JSON."
        rows.append(f"| `{key.path}` | `{key.env_var}` | {shown(key.default)} | {meaning} |")
    return "\n".join(rows)
