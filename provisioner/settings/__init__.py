"""Settings: one YAML file, every key overridable by a PROVISIONER_<SECTION>_<KEY> env var.

The tree of frozen dataclasses below is the one declaration of every key: its name, type,
default, meaning (`doc`) and rules (`__post_init__`). The loader (`settings/load.py`)
walks that tree, so the YAML layout, the env var names and the refusal of unknown keys
at every level follow from it, and so does the README's key table (`settings/docs.py`,
tested equal to the README).
"""

from __future__ import annotations

import base64
import grp
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def setting(default: Any, doc: str, parse: Callable[[Any], Any] | None = None) -> Any:
    """A key: its default, what it means (the README says it), and a parser where the
    type alone does not say how to read the value."""
    return field(default=default, metadata={"doc": doc, "parse": parse})


def required(doc: str) -> Any:
    """A key of a list entry that has no default."""
    return field(metadata={"doc": doc})


def section(cls: type) -> Any:
    """A section (a mapping of keys); left out, it has its keys' defaults."""
    return field(default_factory=cls)


def _group(value: Any) -> int | None:
    """A group name or number; None: the service's own group."""
    if value is None or value == "":
        return None
    if isinstance(value, int) or rules.DIGITS.fullmatch(str(value)):
        return int(value)
    try:
        return grp.getgrnam(str(value)).gr_gid
    except KeyError:
        raise SettingsError(f"no group {value!r} on this machine") from None


_HOST = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")
_DOMAIN = re.compile(
    r"^(?=.{1,200}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
)
_REALM = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ROLES = ("portal", "engineer")
PJSIP_MODES = ("files", "realtime")


# --- Entries of the lists ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    name: str = required("Who uses the key (shown in logs and the audit trail).")
    role: str = required("`portal` (read and write) or `engineer` (read only).")
    key_sha256: str = required("SHA-256 hex digest of the key.")

    def __post_init__(self) -> None:
        if not self.name or self.role not in ROLES:
            raise SettingsError(f"entry {self.name!r} needs a name and a role in {ROLES}")
        digest = self.key_sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise SettingsError(f"{self.name}: key_sha256 must be 64 hex digits")
        object.__setattr__(self, "key_sha256", digest)


@dataclass(frozen=True, kw_only=True)
class Node:
    """One Asterisk node: its AMI, the folder its config includes, and its carrier SBC."""

    name: str = required("Node name, as a PBX's PUT names it.")
    ami_host: str = setting("127.0.0.1", "AMI address.")
    ami_port: int = setting(5038, "AMI port.")
    ami_username: str = required("AMI user.")
    ami_secret: Secret = required("AMI password.")
    output_dir: Path = required("Folder the node's config includes.")
    carrier_host: str = required("Address of the carrier SBC.")
    carrier_port: int = setting(5060, "SIP port of the carrier SBC.")
    sip_host: str = setting("127.0.0.1", "Address the router relays this node's calls to.")
    sip_port: int = setting(5060, "SIP port the router relays this node's calls to.")
    router_host: str = setting(
        "",
        "Address of the SIP router in front of the node: inbound calls are accepted from it "
        "as from the carrier; several routers: their addresses separated by commas. "
        "Empty: no router.",
    )
    # Group that may read the generated files (Asterisk's); they are never world-readable.
    file_group: int | None = setting(
        None, "Group (name or number) of Asterisk; empty: the group of output_dir.", _group
    )
    # Realtime by default: a change is live in milliseconds with no reload that stalls
    # every tenant of the node (README, "PJSIP realtime nodes", the bench's figures).
    pjsip: str = setting(
        "realtime",
        "Where the node's Asterisk reads the tenants' PJSIP endpoints, AORs and auths: "
        "`realtime` (rows in this database, read through a `provisioner pjsip-reader` "
        "role; a change reloads nothing) or `files` (a change reloads res_pjsip).",
    )

    cdr_file: Path | None = setting(
        None,
        "The node's CDR spool: the file Asterisk's cdr_custom appends each call's record to "
        "(`/var/log/asterisk/cdr-custom/provisioner.csv` with the lab's cdr_custom.conf), "
        "readable by the service, which imports it (usage per owner account). Empty: no "
        "usage from this node.",
    )
    standby: str = setting(
        "",
        "Another node that takes this node's PBXs when the SIP router finds this one down "
        "for longer than asterisk.failover_seconds (needs `router`). They stay there when "
        "this node is back; an operator moves each back (PUT its PBX with its node). "
        "Empty: no standby.",
    )

    def __post_init__(self) -> None:
        if not rules.NAME.fullmatch(self.name):
            raise SettingsError(f"bad node name {self.name!r}")
        if self.pjsip not in PJSIP_MODES:
            raise SettingsError(f"{self.name}: pjsip must be one of {', '.join(PJSIP_MODES)}")
        hosts = (self.carrier_host, self.ami_host, self.sip_host)
        routers = self.router_host.split(",") if self.router_host else []
        if not all(_HOST.fullmatch(h) for h in (*hosts, *routers)):
            raise SettingsError(f"{self.name}: bad host")

    @property
    def realtime(self) -> bool:
        """The tenants' PJSIP objects come from the database (asterisk/realtime.py)."""
        return self.pjsip == "realtime"

    @property
    def sip_uri(self) -> str:
        """Where the router sends this node's calls (IPv6 in brackets)."""
        host = f"[{self.sip_host}]" if ":" in self.sip_host else self.sip_host
        return f"sip:{host}:{self.sip_port}"


@dataclass(frozen=True, kw_only=True)
class Webhook:
    """An endpoint of the portal that receives events."""

    url: str = required("Where the POSTs go.")
    secret: Secret = required("`whsec_` and base64 of 16 or more bytes.")
    events: tuple[str, ...] = setting((), "Event type prefixes; empty: every event.")

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise SettingsError(f"{self.url!r}: url must start with http:// or https://")
        secret = self.secret.value
        try:
            valid = (
                secret.startswith("whsec_")
                and len(base64.b64decode(secret[6:], validate=True)) >= 16
            )
        except ValueError:
            valid = False
        if not valid:
            raise SettingsError(f"{self.url}: secret must be whsec_ and base64 of 16+ bytes")

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type.startswith(self.events)


# --- Sections -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Listen:
    host: str = setting("127.0.0.1", "Address the HTTP API binds to.")
    port: int = setting(8080, "Port the HTTP API listens on.")
    header_timeout_seconds: int = setting(
        10,
        "A connection whose request head has not arrived this long after it opened (or"
        " after its last answer: an idle kept-alive connection) is closed.",
    )


@dataclass(frozen=True, kw_only=True)
class Database:
    url: Secret = setting(
        Secret(""),
        "PostgreSQL URL. Empty: start a private PostgreSQL (pgserver) in `data_dir/postgres`.",
    )
    pool_size: int = setting(10, "Largest number of database connections per instance.")


@dataclass(frozen=True, kw_only=True)
class Smtp:
    host: str = setting(
        "", "SMTP server. Empty: mails are written as .eml files to `data_dir/mail`."
    )
    port: int = setting(25, "SMTP port.")
    sender: str = setting("provisioner@localhost", "From address of every mail.")
    username: str = setting("", "SMTP login name; empty: no SMTP authentication.")
    password: Secret = setting(Secret(""), "SMTP password.")
    starttls: bool = setting(False, "Upgrade the SMTP connection with STARTTLS.")
    timeout_seconds: int = setting(30, "Give up on one SMTP delivery attempt after this long.")


@dataclass(frozen=True, kw_only=True)
class Assignment:
    confirm_within_days: int = setting(
        7, "Days both sides have to confirm an assignment before it expires."
    )

    def __post_init__(self) -> None:
        if self.confirm_within_days < 1:
            raise SettingsError("confirm_within_days must be at least 1")


@dataclass(frozen=True, kw_only=True)
class Numbering:
    country: str = setting(
        "DE",
        "ISO country of the operator's numbers (DE or AT); blocks outside it are refused. "
        "Phones dial its emergency and service numbers; the country code comes from each "
        "block.",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "country", self.country.upper())
        if self.country not in COUNTRIES:
            raise SettingsError(
                f"country: {self.country} has no numbering plan here"
                f" ({', '.join(COUNTRIES)}; see domain/numbering.py)"
            )


@dataclass(frozen=True, kw_only=True)
class Log:
    level: str = setting("INFO", "Python log level.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", self.level.upper())


@dataclass(frozen=True, kw_only=True)
class Asterisk:
    nodes: tuple[Node, ...] = setting(
        (),
        "Asterisk nodes. A PBX is homed on one node (`default_node` unless its PUT names "
        "another); `output_dir` is the folder the node's config includes "
        "(`/etc/asterisk/provisioner` in the lab); the carrier SBC is where trunks send "
        "calls and the one address inbound calls are accepted from; the files are readable "
        "by the group `file_group` (Asterisk's; without it, the group of `output_dir`) and "
        "never by others.",
    )
    default_node: str = setting("default", "Node a new PBX is homed on when its PUT names none.")
    sip_realm: str = setting(
        "provisioner",
        "Digest realm of the phones' SIP accounts. A phone's password hash is made for the "
        "realm in force when the phone is created and keeps it.",
    )
    retry_seconds: int = setting(
        5, "First delay before retrying an apply that failed (doubles up to 5 minutes)."
    )
    incremental: bool = setting(
        True,
        "Apply the dialplan by AMI operations on just what changed and coalesce res_pjsip "
        "reloads; false: every round reloads both modules and checks the whole node.",
    )
    pjsip_reload_ms: int = setting(
        1000, "Least time between two coalesced res_pjsip reloads of a node, in milliseconds."
    )
    drift_check_seconds: int = setting(
        900,
        "How often the worker runs the drift check on each node and repairs what drifted "
        "(by a full reload); 0: never (run `provisioner check` by hand).",
    )
    failover_seconds: int = setting(
        10,
        "How long the SIP router must find a node down before its PBXs move to its standby "
        "(asterisk.nodes[].standby): a node that comes back sooner keeps them.",
    )

    def __post_init__(self) -> None:
        names = {n.name for n in self.nodes}
        if len(names) != len(self.nodes):
            raise SettingsError("nodes: node names must be unique")
        for n in self.nodes:
            if n.standby and (n.standby not in names or n.standby == n.name):
                raise SettingsError(f"{n.name}: standby must name another node of asterisk.nodes")
        if self.failover_seconds < 0:
            raise SettingsError("failover_seconds cannot be negative")
        if not rules.NAME.fullmatch(self.default_node):
            raise SettingsError(f"bad default_node {self.default_node!r}")
        if not _REALM.fullmatch(self.sip_realm):
            raise SettingsError("sip_realm: 1 to 64 letters, digits, '.', '_' or '-'")
        if self.pjsip_reload_ms < 0 or self.drift_check_seconds < 0:
            raise SettingsError("pjsip_reload_ms and drift_check_seconds cannot be negative")


@dataclass(frozen=True, kw_only=True)
class Router:
    """The SIP router (Kamailio) in front of the nodes, optional."""

    rpc_url: str = setting(
        "",
        "Kamailio's JSON-RPC over HTTP (jsonrpcs + xhttp), e.g. `http://127.0.0.1:5071/RPC`; "
        "several routers side by side: their URLs separated by commas (each is told every "
        "change; one that cannot be reached catches up when it answers again). "
        "Empty: no router; the carrier reaches each node as configured by hand.",
    )
    timeout_ms: int = setting(2000, "Give up on one RPC to the router after this long.")
    retry_seconds: int = setting(
        1, "First delay before pushing again after the router failed (doubles up to 5 s)."
    )
    health_ms: int = setting(
        1000,
        "How often the service reads which nodes the router marks down (its OPTIONS "
        "probes, dispatcher.list): node.down and node.up events, the provisioner_node_up "
        "gauge, the node check. How often the router probes, and after how many "
        "unanswered probes a node is down, is the router's own config (`lab router-up "
        "--probe-interval/--probe-threshold`; PROBE_INTERVAL/PROBE_THRESHOLD in compose). "
        "0: not read.",
    )

    phone_domain: str = setting(
        "",
        "Phones through the router: a PBX's SIP domain is <slug>.<phone_domain> (the PBX's "
        "`sip_domain` in the API); its phones register with that domain at the router's "
        "phone port (registrar and outbound proxy), which relays them to the PBX's node "
        "wherever it is homed. Empty: the API names no domain (phones register straight to "
        "their node).",
    )

    def __post_init__(self) -> None:
        if self.phone_domain and not _DOMAIN.fullmatch(self.phone_domain):
            raise SettingsError("router.phone_domain must be a DNS name, e.g. pbx.example.net")
        if not all(u.startswith(("http://", "https://")) for u in self.rpc_urls):
            raise SettingsError("router.rpc_url: each URL must start with http:// or https://")
        if len(set(self.rpc_urls)) != len(self.rpc_urls):
            raise SettingsError("router.rpc_url names a router twice")
        if self.timeout_ms < 1 or self.retry_seconds < 1:
            raise SettingsError("router.timeout_ms and router.retry_seconds must be positive")
        if self.health_ms < 0:
            raise SettingsError("router.health_ms cannot be negative")

    def __bool__(self) -> bool:
        return bool(self.rpc_urls)

    @property
    def rpc_urls(self) -> tuple[str, ...]:
        """One URL per router instance."""
        return tuple(u.strip() for u in self.rpc_url.split(",") if u.strip())


@dataclass(frozen=True, kw_only=True)
class Billing:
    """Usage per owner account, from the nodes' call records (asterisk.nodes[].cdr_file)."""

    call_events: bool = setting(
        False, "Put a `call.ended` event in the feed (and webhooks) for every call record."
    )
    retention_days: int = setting(
        400, "Call records older than this many days are deleted; 0: kept for ever."
    )
    import_interval_ms: int = setting(
        1000, "How often each node's CDR spool is read for new records, in milliseconds."
    )

    def __post_init__(self) -> None:
        if self.retention_days < 0 or self.import_interval_ms < 10:
            raise SettingsError(
                "billing.retention_days cannot be negative, billing.import_interval_ms is"
                " at least 10"
            )


@dataclass(frozen=True, kw_only=True)
class Secrets:
    keys: tuple[Secret, ...] = setting(
        (),
        "Fernet keys (`provisioner new-secrets-key`) that seal trunk passwords in the "
        "database: the first seals, all open (put a new key first, run `provisioner "
        "rotate-secrets`, then drop the old one). Empty: trunk credentials are refused with "
        "422 `secrets_key_missing`.",
    )

    def __post_init__(self) -> None:
        for number, key in enumerate(self.keys, 1):
            if not SecretBox.valid_key(key.value):
                raise SettingsError(
                    f"keys: key {number} is no Fernet key (make one with"
                    " `provisioner new-secrets-key`)"
                )


@dataclass(frozen=True, kw_only=True)
class Settings:
    listen: Listen = section(Listen)
    public_base_url: str = setting(
        "http://127.0.0.1:8080",
        "Base URL the confirm links in mails point to (the service's public address).",
    )
    database: Database = section(Database)
    data_dir: Path = setting(
        Path("data"), "Folder for the embedded database and, without SMTP, mails."
    )
    smtp: Smtp = section(Smtp)
    api_keys: tuple[ApiKey, ...] = setting(
        (),
        "Who may call the API. Only the SHA-256 hex digest of a key is configured (`printf "
        "%s KEY | sha256sum`).",
    )
    assignment: Assignment = section(Assignment)
    numbering: Numbering = section(Numbering)
    log: Log = section(Log)
    asterisk: Asterisk = section(Asterisk)
    router: Router = section(Router)
    billing: Billing = section(Billing)
    secrets: Secrets = section(Secrets)
    webhooks: tuple[Webhook, ...] = setting(
        (),
        "Where events are pushed. Each gets every event (or those whose type starts with one "
        "of `events`, e.g. `assignment.`) as a signed POST (Standard Webhooks: `webhook-id`, "
        "`webhook-timestamp`, `webhook-signature`), in order, at least once, retried with "
        "backoff.",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/"))
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())
        if not self.public_base_url.startswith(("http://", "https://")):
            raise SettingsError("public_base_url must start with http:// or https://")

    def node(self, name: str) -> Node | None:
        return next((n for n in self.asterisk.nodes if n.name == name), None)

    def secret_box(self) -> SecretBox:
        return SecretBox([k.value for k in self.secrets.keys])
