"""Generated config as telecom engineers see it: render, revisions, diffs, apply state."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from provisioner.db import Conn, apply_queue, apply_state, revisions
from provisioner.db.accounts import Pbx
from provisioner.db.apply_state import ApplyState
from provisioner.db.revisions import Revision
from provisioner.domain.credentials import SecretBox
from provisioner.domain.errors import NotFound
from provisioner.render.load import files_for_node
from provisioner.render.render import redacted
from provisioner.service.pbx import require_pbx
from provisioner.service.unit import Unit
from provisioner.settings import Node


@dataclass(frozen=True)
class ConfigStatus:
    customer: str
    node: str
    revision: Revision | None
    state: ApplyState | None


async def current(u: Unit, customer: str) -> ConfigStatus:
    pbx = await require_pbx(u, customer)
    state = await apply_state.get(u.conn, pbx.id)
    waiting = await apply_queue.waiting_job(u.conn, pbx.id)
    if state is not None and waiting is not None and waiting.requested_at > state.updated_at:
        # A change came in after the state was recorded (a PUT queues its apply in its
        # own transaction): the recorded state is of an older revision. `applied` (or
        # `failed`) must be of the round that took this change, so a client that polls
        # for it after its PUT cannot stop on the state before.
        error = state.error if state.state == "pending" else None
        state = dataclasses.replace(state, state="pending", error=error)
    return ConfigStatus(customer, pbx.node, await revisions.latest_revision(u.conn, pbx.id), state)


async def render(conn: Conn, pbx: Pbx, node: Node, secrets: SecretBox) -> dict[str, str]:
    """What the PBX's files would be now, from the database, as people may see them
    (secrets redacted); touches no Asterisk."""
    return redacted(await files_for_node(conn, pbx, node, secrets))


async def _files(u: Unit, pbx: Pbx, number: int | None) -> tuple[str, dict[str, str]]:
    if number is None:
        latest = await revisions.latest_revision(u.conn, pbx.id)
        if latest is None:
            return "(none)", {}
        return f"revision {latest.revision}", latest.files
    found = await revisions.revision(u.conn, pbx.id, number)
    if found is None:
        raise NotFound(f"no revision {number}", code="revision_not_found")
    return f"revision {number}", found.files


async def diff(u: Unit, customer: str, start: int | None, end: int | None) -> str:
    """Unified diff between two revisions (default: the one before the latest, and the
    latest)."""
    pbx = await require_pbx(u, customer)
    if start is None:
        latest = await revisions.latest_revision(u.conn, pbx.id)
        start = latest.revision - 1 if latest and latest.revision > 1 else None
    a_name, a = await _files(u, pbx, start) if start is not None else ("(none)", {})
    b_name, b = await _files(u, pbx, end)
    return unified(a, b, a_name, b_name)


def unified(a: dict[str, str], b: dict[str, str], a_name: str, b_name: str) -> str:
    out: list[str] = []
    for path in sorted(set(a) | set(b)):
        out.extend(
            difflib.unified_diff(
                a.get(path, "").splitlines(keepends=True),
                b.get(path, "").splitlines(keepends=True),
                fromfile=f"{path} ({a_name})",
                tofile=f"{path} ({b_name})",
            )
        )
    return "".join(out)
