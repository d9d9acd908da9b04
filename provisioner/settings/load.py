"""The loader: the declaration's tree (provisioner.settings) read from one YAML file and
PROVISIONER_<SECTION>_<KEY> env vars, each key converted to its declared type and
checked by its class's rules; an unknown key is refused at every level, with its path.

Why plain dataclasses and a small loader, not pydantic-settings or msgspec: the env
var names keep their single `_` between section and key (`PROVISIONER_SMTP_TIMEOUT_SECONDS`),
which pydantic-settings' nested delimiter cannot tell from a `_` inside a key name; and
the whole loader is the ~80 lines of `_convert` and `_overrides`, with no second
validation library beside the one request bodies use.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from provisioner.settings import Secret, Settings, SettingsError


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp is not Secret


@dataclass(frozen=True)
class Key:
    """One key of the tree (a leaf: a value or a list of entries), for env vars and docs."""

    path: str
    hint: Any  # the declared type
    spec: dataclasses.Field[Any]

    @property
    def env_var(self) -> str:
        return "PROVISIONER_" + self.path.replace(".", "_").upper()

    @property
    def doc(self) -> str:
        return str(self.spec.metadata.get("doc", ""))

    @property
    def default(self) -> Any:
        return self.spec.default


def declared_keys(cls: type = Settings, prefix: str = "") -> Iterator[Key]:
    """Every key of the tree, sections flattened to dotted paths, in declaration order."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if is_section(tp):
            yield from declared_keys(tp, f"{prefix}{f.name}.")
        else:
            yield Key(prefix + f.name, tp, f)


def _convert(tp: Any, value: Any, where: str, parse: Callable[[Any], Any] | None = None) -> Any:
    """`value` (from YAML, or an env var's text) as the declared type `tp`."""
    if parse is not None:
        try:
            return parse(value)
        except SettingsError as exc:
            raise SettingsError(f"{where}: {exc}") from None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):  # X | None
        inner = next(a for a in args if a is not type(None))
        return None if value is None or value == "" else _convert(inner, value, where)
    if origin is tuple:
        if isinstance(value, str):  # an env var carries a list as YAML or JSON text
            try:
                value = yaml.safe_load(value) or []
            except yaml.YAMLError:
                raise SettingsError(f"{where}: expected a list in YAML or JSON") from None
        if not isinstance(value, list):
            raise SettingsError(f"{where}: expected a list")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on", "0", "false", "no", "off", ""}:
            return text in {"1", "true", "yes", "on"}
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            return int(value)
        raise SettingsError(f"{where}: expected a whole number, got {value!r}")
    if tp in (str, Path, Secret):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SettingsError(f"{where}: expected a string, got {type(value).__name__}")
        return tp(str(value))
    if is_section(tp):
        if not isinstance(value, Mapping):
            raise SettingsError(f"{where}: expected a mapping")
        return _build(tp, value, where)
    raise TypeError(f"{where}: no reader for {tp}")  # a declaration this loader lacks


def _build(cls: type, tree: Mapping[str, Any], where: str) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in tree if k not in names)
    if unknown:
        listed = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise SettingsError(f"unknown keys: {listed}")
    values = {}
    for f in dataclasses.fields(cls):
        path = f"{where}.{f.name}" if where else f.name
        if f.name in tree and tree[f.name] is not None:
            values[f.name] = _convert(hints[f.name], tree[f.name], path, f.metadata.get("parse"))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SettingsError(f"{path} is required")
    try:
        return cls(**values)
    except SettingsError as exc:
        raise SettingsError(f"{where}: {exc}" if where else str(exc)) from None


def _overrides(tree: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The YAML tree with each key set by its env var (as text; `_convert` reads it)."""
    merged: dict[str, Any] = _copy(tree)
    for key in declared_keys():
        if key.env_var in env:
            node = merged
            *sections, name = key.path.split(".")
            for part in sections:
                inner = node.get(part)
                node[part] = inner = inner if isinstance(inner, dict) else {}
                node = inner
            node[name] = env[key.env_var]
    return merged


def _copy(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def load(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read the YAML file (if any), then apply env overrides, then validate."""
    env = os.environ if env is None else env
    path = path if path is not None else env.get("PROVISIONER_CONFIG") or None
    tree: Any = {}
    if path:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(tree, Mapping):
            raise SettingsError(f"{path}: the top level must be a mapping")
    try:
        built: Settings = _build(Settings, _overrides(tree, env), "")
    except SettingsError as exc:
        named = [k.env_var for k in declared_keys() if k.env_var in env and k.path in str(exc)]
        raise SettingsError(
            f"{path or 'settings'}: {exc}" + (f" (from {', '.join(named)})" if named else "")
        ) from None
    return built
