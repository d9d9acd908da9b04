"""Settings: one YAML file, every key overridable by a PROVISIONER_<SECTION>_<KEY> env var.

All keys are listed once in KEYS; loading, env overrides and the README's key table
(checked by a test) all follow from that one list.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from provisioner.domain import rules
from provisioner.domain.credentials import SecretBox
from provisioner.domain.numbering import COUNTRIES


class SettingsError(Exception):
    """The configuration file or an env var holds something we cannot use."""


@dataclass(frozen=True)
class Secret:
    """A value that must not end up in logs or reprs."""

    value: str

    def __repr__(self) -> str:
        return "Secret('***')" if self.value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True)
class Key:
    """One documented configuration key."""

    path: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str

    @property
    def env_var(self) -> str:
        return "PROVISIONER_" + self.path.replace(".", "_").upper()


def _str(value: Any) -> str:
    if not isinstance(value, str | int | float):
        raise SettingsError(f"expected a string, got {type(value).__name__}")
    return str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"expected a whole number, got {value!r}") from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"expected true or false, got {value!r}")


def _secret(value: Any) -> Secret:
    return Secret("" if value is None else _str(value))


def _secret_list(value: Any) -> tuple[Secret, ...]:
    return tuple(Secret(_str(v)) for v in _list(value))


def _list(value: Any) -> list[Any]:
    # An env var carries a list as YAML/JSON text.
    if isinstance(value, str):
        value = yaml.safe_load(value) or []
    if not isinstance(value, list):
        raise SettingsError("expected a list")
    return value


KEYS: tuple[Key, ...] = (
    Key("listen.host", "127.0.0.1", _str, "Address the HTTP API binds to."),
    Key("listen.port", 8080, _int, "Port the HTTP API listens on."),
    Key(
        "public_base_url",
        "http://127.0.0.1:8080",
        _str,
        "Base URL the confirm links in mails point to (the service's public address).",
    ),
    Key(
        "database.url",
        "",
        _secret,
        "PostgreSQL URL. Empty: start a private PostgreSQL (pgserver) in `data_dir/postgres`.",
    ),
    Key("database.pool_size", 10, _int, "Largest number of database connections per instance."),
    Key("data_dir", "data", _str, "Folder for the embedded database and, without SMTP, mails."),
    Key(
        "smtp.host",
        "",
        _str,
        "SMTP server. Empty: mails are written as .eml files to `data_dir/mail`.",
    ),
    Key("smtp.port", 25, _int, "SMTP port."),
    Key("smtp.sender", "provisioner@localhost", _str, "From address of every mail."),
    Key("smtp.username", "", _str, "SMTP login name; empty: no SMTP authentication."),
    Key("smtp.password", "", _secret, "SMTP password."),
    Key("smtp.starttls", False, _bool, "Upgrade the SMTP connection with STARTTLS."),
    Key("smtp.timeout_seconds", 30, _int, "Give up on one SMTP delivery attempt after this long."),
    Key(
        "api_keys",
        [],
        _list,
        "List of `{name, role, key_sha256}`; role `portal` (read and write) or `engineer` "
        "(read only). Only the SHA-256 hex digest of a key is configured (`printf %s KEY | "
        "sha256sum`). As an env var: the list as YAML or JSON.",
    ),
    Key(
        "assignment.confirm_within_days",
        7,
        _int,
        "Days both sides have to confirm an assignment before it expires.",
    ),
    Key(
        "numbering.country",
        "DE",
        _str,
        "ISO country of the operator's numbers (DE or AT); blocks outside it are refused. "
        "Phones dial its emergency and service numbers; the country code comes from each "
        "block.",
    ),
    Key("log.level", "INFO", _str, "Python log level."),
    Key(
        "asterisk.nodes",
        [],
        _list,
        "Asterisk nodes: a list of `{name, ami_host, ami_port, ami_username, ami_secret, "
        "output_dir, carrier_host, carrier_port, file_group}`. A PBX is homed on one node "
        "(`default` unless its PUT names another); `output_dir` is the folder the node's "
        "config includes (`/etc/asterisk/provisioner` in the lab); the carrier SBC is where "
        "trunks send calls and the one address inbound calls are accepted from; the files "
        "are readable by the group `file_group` (Asterisk's) and never by others.",
    ),
    Key(
        "asterisk.sip_realm",
        "provisioner",
        _str,
        "Digest realm of the phones' SIP accounts. A phone's password hash is made for the "
        "realm in force when the phone is created and keeps it.",
    ),
    Key(
        "secrets.keys",
        [],
        _secret_list,
        "Fernet keys (`provisioner new-secrets-key`) that seal trunk passwords in the "
        "database: the first seals, all open (put a new key first, run `provisioner "
        "rotate-secrets`, then drop the old one). Empty: trunk credentials are refused with "
        "422 `secrets_key_missing`. As an env var: the list as YAML or JSON.",
    ),
    Key(
        "asterisk.retry_seconds",
        5,
        _int,
        "First delay before retrying an apply that failed (doubles up to 5 minutes).",
    ),
    Key(
        "webhooks",
        [],
        _list,
        "Where events are pushed: a list of `{url, secret, events}`. Each gets every event "
        "(or those whose type starts with one of `events`, e.g. `assignment.`) as a signed "
        "POST (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`; "
        "`secret` is `whsec_` and base64), in order, at least once, retried with backoff.",
    ),
    Key(
        "asterisk.incremental",
        True,
        _bool,
        "Apply the dialplan by AMI operations on just what changed and coalesce res_pjsip "
        "reloads; false: every round reloads both modules and checks the whole node.",
    ),
    Key(
        "asterisk.pjsip_reload_ms",
        1000,
        _int,
        "Least time between two coalesced res_pjsip reloads of a node, in milliseconds.",
    ),
    Key(
        "asterisk.drift_check_seconds",
        900,
        _int,
        "How often the worker runs the drift check on each node and repairs what drifted "
        "(by a full reload); 0: never (run `provisioner check` by hand).",
    ),
)

ROLES = ("portal", "engineer")


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: str
    key_sha256: str


@dataclass(frozen=True)
class Node:
    """One Asterisk node: its AMI, the folder its config includes, and its carrier SBC."""

    name: str
    ami_host: str
    ami_port: int
    ami_username: str
    ami_secret: Secret
    output_dir: Path
    carrier_host: str
    carrier_port: int
    # Group that may read the generated files (Asterisk's); they are never world-readable.
    file_group: int | None = None


@dataclass(frozen=True)
class Webhook:
    """An endpoint of the portal that receives events."""

    url: str
    secret: Secret  # whsec_<base64 key>
    events: tuple[str, ...] = ()  # type prefixes; empty: every event

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type.startswith(self.events)


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    sender: str
    username: str
    password: Secret
    starttls: bool
    timeout_seconds: int


@dataclass(frozen=True)
class Settings:
    listen_host: str
    listen_port: int
    public_base_url: str
    database_url: Secret
    database_pool_size: int
    data_dir: Path
    smtp: Smtp
    api_keys: tuple[ApiKey, ...]
    confirm_within_days: int
    country: str
    log_level: str
    nodes: tuple[Node, ...] = ()
    apply_retry_seconds: int = 5
    sip_realm: str = "provisioner"
    secret_keys: tuple[Secret, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    incremental: bool = True
    pjsip_reload_ms: int = 1000
    drift_check_seconds: int = 900

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def secret_box(self) -> SecretBox:
        return SecretBox([k.value for k in self.secret_keys])

    def api_key_for(self, presented: str) -> ApiKey | None:
        digest = hashlib.sha256(presented.encode()).hexdigest()
        for key in self.api_keys:
            if key.key_sha256 == digest:
                return key
        return None


def key_table() -> str:
    """The README's table of keys, made from KEYS (a test keeps the README equal to it)."""

    def shown(default: Any) -> str:
        if default in ("", [], None):
            return "(empty)"
        text = str(default).lower() if isinstance(default, bool) else str(default)
        return f"`{text}`"

    rows = ["| key | env var | default | meaning |", "|---|---|---|---|"]
    for key in KEYS:
        meaning = key.doc.replace("|", "\\|")
        rows.append(f"| `{key.path}` | `{key.env_var}` | {shown(key.default)} | {meaning} |")
    return "\n".join(rows)


def _lookup(tree: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _known_paths(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for name, value in tree.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping) and not any(k.path == path for k in KEYS):
            paths.extend(_known_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


def _api_keys(raw: list[Any]) -> tuple[ApiKey, ...]:
    keys = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise SettingsError("api_keys: each entry needs name, role and key_sha256")
        unknown = sorted(set(entry) - {f.name for f in fields(ApiKey)})
        if unknown:
            raise SettingsError(f"api_keys: entry {entry.get('name')!r}: unknown keys: {unknown}")
        name, role = str(entry.get("name", "")), str(entry.get("role", ""))
        digest = str(entry.get("key_sha256", "")).lower()
        if not name or role not in ROLES:
            raise SettingsError(f"api_keys: entry {name!r} needs a name and a role in {ROLES}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise SettingsError(f"api_keys: {name}: key_sha256 must be 64 hex digits")
        keys.append(ApiKey(name, role, digest))
    return tuple(keys)


def _webhooks(raw: list[Any]) -> tuple[Webhook, ...]:
    hooks = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise SettingsError("webhooks: each entry needs url and secret")
        unknown = sorted(set(entry) - {f.name for f in fields(Webhook)})
        if unknown:
            raise SettingsError(f"webhooks: entry {entry.get('url')!r}: unknown keys: {unknown}")
        url, secret = str(entry.get("url", "")), str(entry.get("secret", ""))
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"webhooks: {url!r}: url must start with http:// or https://")
        try:
            valid = (
                secret.startswith("whsec_")
                and len(base64.b64decode(secret[6:], validate=True)) >= 16
            )
        except ValueError:
            valid = False
        if not valid:
            raise SettingsError(f"webhooks: {url}: secret must be whsec_ and base64 of 16+ bytes")
        events = entry.get("events") or []
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise SettingsError(f"webhooks: {url}: events must be a list of event type prefixes")
        hooks.append(Webhook(url, Secret(secret), tuple(events)))
    return tuple(hooks)


def _group(value: Any) -> int | None:
    """A group name or number; None: the service's own group."""
    if value is None or value == "":
        return None
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    try:
        return grp.getgrnam(str(value)).gr_gid
    except KeyError:
        raise ValueError(f"no group {value!r} on this machine") from None


_HOST = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")
_REALM = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _nodes(raw: list[Any]) -> tuple[Node, ...]:
    nodes = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise SettingsError("asterisk.nodes: each entry must be a mapping")
        unknown = sorted(set(entry) - {f.name for f in fields(Node)})
        if unknown:
            raise SettingsError(
                f"asterisk.nodes: entry {entry.get('name')!r}: unknown keys: {', '.join(unknown)}"
            )
        try:
            node = Node(
                name=str(entry["name"]),
                ami_host=str(entry.get("ami_host", "127.0.0.1")),
                ami_port=int(entry.get("ami_port", 5038)),
                ami_username=str(entry["ami_username"]),
                ami_secret=Secret(str(entry["ami_secret"])),
                output_dir=Path(str(entry["output_dir"])),
                carrier_host=str(entry["carrier_host"]),
                carrier_port=int(entry.get("carrier_port", 5060)),
                file_group=_group(entry.get("file_group")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SettingsError(f"asterisk.nodes: entry {entry.get('name')!r}: {exc}") from None
        if not rules.NAME.match(node.name):
            raise SettingsError(f"asterisk.nodes: bad node name {node.name!r}")
        if not _HOST.match(node.carrier_host) or not _HOST.match(node.ami_host):
            raise SettingsError(f"asterisk.nodes: {node.name}: bad host")
        nodes.append(node)
    if len({n.name for n in nodes}) != len(nodes):
        raise SettingsError("asterisk.nodes: node names must be unique")
    return tuple(nodes)


def load(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read the YAML file (if any), then apply env overrides, then validate."""
    env = os.environ if env is None else env
    path = path if path is not None else env.get("PROVISIONER_CONFIG") or None
    tree: Mapping[str, Any] = {}
    if path:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(tree, Mapping):
            raise SettingsError(f"{path}: the top level must be a mapping")
        unknown = sorted(set(_known_paths(tree)) - {k.path for k in KEYS})
        if unknown:
            raise SettingsError(f"{path}: unknown keys: {', '.join(unknown)}")

    values: dict[str, Any] = {}
    for key in KEYS:
        found, raw = _lookup(tree, key.path)
        if key.env_var in env:
            found, raw = True, env[key.env_var]
        try:
            values[key.path] = key.parse(raw if found and raw is not None else key.default)
        except SettingsError as exc:
            raise SettingsError(f"{key.path} ({key.env_var}): {exc}") from None

    settings = Settings(
        listen_host=values["listen.host"],
        listen_port=values["listen.port"],
        public_base_url=values["public_base_url"].rstrip("/"),
        database_url=values["database.url"],
        database_pool_size=values["database.pool_size"],
        data_dir=Path(values["data_dir"]).resolve(),
        smtp=Smtp(
            host=values["smtp.host"],
            port=values["smtp.port"],
            sender=values["smtp.sender"],
            username=values["smtp.username"],
            password=values["smtp.password"],
            starttls=values["smtp.starttls"],
            timeout_seconds=values["smtp.timeout_seconds"],
        ),
        api_keys=_api_keys(values["api_keys"]),
        confirm_within_days=values["assignment.confirm_within_days"],
        country=values["numbering.country"].upper(),
        log_level=values["log.level"].upper(),
        nodes=_nodes(values["asterisk.nodes"]),
        apply_retry_seconds=values["asterisk.retry_seconds"],
        sip_realm=values["asterisk.sip_realm"],
        secret_keys=values["secrets.keys"],
        webhooks=_webhooks(values["webhooks"]),
        incremental=values["asterisk.incremental"],
        pjsip_reload_ms=values["asterisk.pjsip_reload_ms"],
        drift_check_seconds=values["asterisk.drift_check_seconds"],
    )
    if settings.pjsip_reload_ms < 0 or settings.drift_check_seconds < 0:
        raise SettingsError("asterisk.pjsip_reload_ms and drift_check_seconds cannot be negative")
    if settings.country not in COUNTRIES:
        raise SettingsError(
            f"numbering.country: {settings.country} has no numbering plan here"
            f" ({', '.join(COUNTRIES)}; see domain/numbering.py)"
        )
    if not _REALM.match(settings.sip_realm):
        raise SettingsError("asterisk.sip_realm: 1 to 64 letters, digits, '.', '_' or '-'")
    for number, secret_key in enumerate(settings.secret_keys, 1):
        if not SecretBox.valid_key(secret_key.value):
            raise SettingsError(
                f"secrets.keys: key {number} is no Fernet key (make one with"
                " `provisioner new-secrets-key`)"
            )
    if settings.confirm_within_days < 1:
        raise SettingsError("assignment.confirm_within_days must be at least 1")
    if not settings.public_base_url.startswith(("http://", "https://")):
        raise SettingsError("public_base_url must start with http:// or https://")
    return settings
