"""Rendering views through the jinja2 templates in templates/pjsip and templates/dialplan."""

from __future__ import annotations

import hashlib
import re

import jinja2

from provisioner.render import safe
from provisioner.render.view import Carrier, PbxView
from provisioner.settings import Node


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        # templates/ at the top of the repository (where engineers look for them), linked
        # into the package as provisioner/templates so that a wheel carries them.
        loader=jinja2.PackageLoader("provisioner", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - Asterisk config: checked by finalize and filters
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Every {{ }} is a token unless a filter below made it something else.
        finalize=safe.by_default,
    )
    env.filters.update(secret=safe.secret, name=safe.display_name, comment=safe.comment,
                       address=safe.address)  # fmt: skip
    return env


ENVIRONMENT = _environment()


# Options whose value is a credential. Config shown to people (the API, `provisioner diff`,
# the stored revisions) has `<secret>` in their place; only the files on disk have them.
SECRET_OPTIONS = ("password", "md5_cred")
PLACEHOLDER = "<secret>"
_SECRET_LINE = re.compile(rf"^(\s*(?:{'|'.join(SECRET_OPTIONS)})\s*=>?\s*)\S.*$", re.M)


def redact(text: str) -> str:
    """The text with every secret option's value replaced by the placeholder."""
    return _SECRET_LINE.sub(lambda m: m.group(1) + PLACEHOLDER, text)


def redacted(files: dict[str, str]) -> dict[str, str]:
    return {path: redact(text) for path, text in files.items()}


def _tidy(text: str) -> str:
    """At most one blank line in a row, one newline at the end: diffs stay quiet."""
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def pbx_files(view: PbxView, carrier: Carrier) -> dict[str, str]:
    """The files of one PBX, by path relative to the node's output folder."""
    return {
        f"pjsip/tenant-{view.slug}.conf": _tidy(
            ENVIRONMENT.get_template("pjsip/tenant.conf.j2").render(v=view, carrier=carrier)
        ),
        f"dialplan/tenant-{view.slug}.conf": _tidy(
            ENVIRONMENT.get_template("dialplan/tenant.conf.j2").render(v=view)
        ),
    }


def own_files(node: Node) -> dict[str, str]:
    """The node's own files, as its settings make them (node_files of its carrier)."""
    return node_files(Carrier.of(node))


def node_files(carrier: Carrier) -> dict[str, str]:
    """The node's own files: the carrier endpoint and the fallback of [carrier-in]."""
    return {
        "pjsip/node-carrier.conf": _tidy(
            ENVIRONMENT.get_template("pjsip/carrier.conf.j2").render(carrier=carrier)
        ),
        "dialplan/node-carrier.conf": _tidy(
            ENVIRONMENT.get_template("dialplan/carrier.conf.j2").render()
        ),
    }


def digest(files: dict[str, str]) -> str:
    """One hash over all files of a revision, in path order."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()
