"""The only doors from data into config text.

A config value can end a line, open a section ([x]), add an option (=), start a
comment (;), include a file (#include) or expand a variable (${...}). Every value that
reaches a template passes one of these filters, which either keep a value to a
character set that can do none of that, or refuse it; a value written without a filter
is checked as a token (by_default, the environment's finalize).
"""

from __future__ import annotations

import re

from provisioner.domain import rules

# Object names, numbers, usernames: what may stand unquoted anywhere in a config line,
# and no longer than Asterisk keeps a dialplan context's name (80 bytes with the NUL).
MAX_TOKEN = rules.MAX_CONFIG_NAME
TOKEN = re.compile(rf"^[A-Za-z0-9_.+-]{{1,{MAX_TOKEN}}}$")
# Secrets (passwords): printable ASCII without ; # [ ] = $ { } " \ and no spaces.
SECRET = re.compile(r"^[A-Za-z0-9_.,:@%!?*/()<>^~|'`&+-]{1,128}$")
# A network address, with a port if need be: an IPv4 address or a host name, or an IPv6
# address in brackets, then :port (an identify's `match` of one source port).
ADDRESS = re.compile(r"^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?$")
# Display names keep letters of any script, digits and a little punctuation.
_NAME_DROP = re.compile(r"[^\w .,'&()/+-]", re.UNICODE)


class UnsafeValue(ValueError):
    """A value that cannot be written into config as it is."""


class Checked(str):
    """Text one of the doors below let through. The template environment checks every
    other output as a token (by_default), so an interpolation without a filter is never
    written unchecked."""


def token(value: object) -> Checked:
    text = str(value)
    if not TOKEN.fullmatch(text):
        raise UnsafeValue(f"not a config token: {text!r}")
    return Checked(text)


def address(value: object) -> Checked:
    text = str(value)
    if not ADDRESS.fullmatch(text):
        raise UnsafeValue(f"not a network address: {text!r}")
    return Checked(text)


def secret(value: object) -> Checked:
    text = str(value)
    if not SECRET.fullmatch(text):
        raise UnsafeValue("a secret holds characters config cannot carry")
    return Checked(text)


def display_name(value: object) -> Checked:
    """A caller name for `callerid = "NAME" <num>`: everything else is dropped."""
    text = _NAME_DROP.sub("", str(value).replace("_", " "))
    return Checked(" ".join(text.split())[:60] or "PBX")


def comment(value: object) -> Checked:
    """Free text for a `;` comment: one line, and (belt and braces) none of the
    characters that mean something in config, even though a comment would disarm them."""
    return Checked(" ".join(_NAME_DROP.sub(" ", str(value)).split())[:120])


def by_default(value: object) -> Checked:
    """The template environment's finalize: what no filter checked must be a token."""
    return value if isinstance(value, Checked) else token(value)
