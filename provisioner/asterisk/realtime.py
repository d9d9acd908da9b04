"""PJSIP objects on a realtime node: rows and an expired cache entry, never a reload.

On a node with `pjsip: realtime`, Asterisk reads its tenants' endpoints, AORs and auths
from the database (sorcery's realtime wizard through res_config_pgsql, migration 0013)
and keeps each one it looked up in sorcery's memory cache. A PBX's pjsip file is still
written as on any node: engineers read it, diffs and revisions show it, and the rows are
read from it (`objects`), so the template stays the one declaration of what an endpoint
is. A change is then: the PBX's rows in one transaction, each changed object expired
from Asterisk's cache (AMI SorceryMemoryCacheExpireObject), each changed endpoint read
back. A reload of res_pjsip costs seconds on a big node and stalls every tenant's
calls meanwhile; this costs milliseconds and touches nobody else.

The node's own endpoint and AOR (the carrier's) are rows too (no PBX), so a realtime
node never reloads res_pjsip. What stays in files is reloaded module by module, each
reading only its own objects: outbound registrations (res_pjsip_outbound_registration
only learns of registrations when it loads, from a file or from realtime alike, so a
changed one needs a reload of that module either way) and the carrier's identify
(res_pjsip_endpoint_identifier_ip), when the node's own file changes.
"""

from __future__ import annotations

from provisioner.asterisk.ami import Ami
from provisioner.asterisk.parse import of_kind, sections
from provisioner.db.pjsip_rows import Fields, Key

REGISTRATIONS = "res_pjsip_outbound_registration.so"
IDENTIFY = "res_pjsip_endpoint_identifier_ip.so"  # the carrier's identify, from the file
# A full round expires the objects it changed one by one (an AMI action each) up to this
# many; beyond, it empties the whole cache at once (a node just switched to realtime).
REFILL_AT = 1000

# The columns of the views Asterisk reads (migration 0013), in their order. An option a
# template writes must be one of them: `objects` refuses any other (tests render a PBX
# with phones, pickup groups, caller-ID variables and a registering trunk, and the
# node's file, against these; and compare these with the views themselves).
COLUMNS: dict[str, tuple[str, ...]] = {
    "endpoint": (
        "context", "subscribe_context", "callerid", "accountcode", "auth", "aors",
        "outbound_auth", "disallow", "allow", "direct_media", "allow_subscribe",
        "allow_transfer", "named_call_group", "named_pickup_group", "send_pai",
        "trust_id_outbound", "send_connected_line", "set_var",
    ),
    "aor": ("contact", "max_contacts", "remove_existing", "support_path"),
    "auth": ("auth_type", "username", "password", "realm", "md5_cred"),
}  # fmt: skip


class NotRealtime(ValueError):
    """A PJSIP option that has no column: the template and the views disagree."""


def encode(value: str) -> str:
    """One value as res_config_pgsql reads it: it splits a column at ';' into several
    values of the option and decodes ^XX, so '^' and ';' are written ^5E and ^3B."""
    return value.replace("^", "^5E").replace(";", "^3B")


def objects(config: dict[str, str]) -> dict[Key, Fields]:
    """The realtime objects (endpoints, AORs, auths) of a PBX's pjsip files, as rows:
    (type, id) -> option -> value; an option given several times (set_var) is one
    value, its parts joined by ';'."""
    found: dict[Key, Fields] = {}
    for text in of_kind(config, "pjsip").values():
        for (name, kind), body in sections(text).items():
            if kind not in COLUMNS:
                continue  # registrations stay in the file
            options: dict[str, list[str]] = {}
            for line in body.splitlines()[1:]:
                key, _, value = (part.strip() for part in line.partition("="))
                if key == "type":
                    continue
                if key not in COLUMNS[kind]:
                    raise NotRealtime(f"{kind} option {key!r} has no realtime column")
                options.setdefault(key, []).append(encode(value))
            found[(kind, name)] = {key: ";".join(values) for key, values in options.items()}
    return found


def registrations(config: dict[str, str]) -> dict[str, str]:
    """The outbound registrations of a PBX's pjsip files (name -> section text)."""
    return {
        name: body
        for text in of_kind(config, "pjsip").values()
        for (name, kind), body in sections(text).items()
        if kind == "registration"
    }


async def make_live(ami: Ami, changed: set[Key], wanted: dict[Key, Fields]) -> list[str]:
    """Expire each changed object from Asterisk's cache, then read back each endpoint
    whose objects changed; what is not as the rows say (empty: all is live)."""
    for kind, name in sorted(changed):
        await ami.expire_cached(kind, name)
    problems = []
    for name in sorted({name for _, name in changed}):
        problems += read_back(name, wanted, await ami.endpoint_shown(name))
    return problems


def read_back(name: str, wanted: dict[Key, Fields], shown: str | None) -> list[str]:
    """Compare one endpoint as the CLI shows it (`pjsip show endpoint`, which shows no
    secret) with its rows: there or gone, its context, and its AOR and auths found."""
    endpoint = wanted.get(("endpoint", name))
    if endpoint is None:
        return [] if shown is None else [f"endpoint {name} is still live"]
    if shown is None:
        return [f"endpoint {name} is not live"]
    problems = []
    lines = [line.split() for line in shown.splitlines()]
    context = next((w[2] for w in lines if len(w) > 2 and w[:2] == ["context", ":"]), "")
    if context != endpoint.get("context"):
        problems.append(f"endpoint {name}: context {context!r}, not {endpoint.get('context')!r}")
    for label, option in (("Aor:", "aors"), ("InAuth:", "auth"), ("OutAuth:", "outbound_auth")):
        for ref in filter(None, endpoint.get(option, "").split(",")):
            if not any(w[:1] == [label] and w[1].split("/")[0] == ref for w in lines if w[1:]):
                problems.append(f"endpoint {name}: {option} {ref} not found")
    return problems
