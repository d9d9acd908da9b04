"""Call records as the usage per owner account counts them: one line of a node's CDR
spool (Asterisk's cdr_custom, asterisk-docker/conf/cdr_custom.conf) read into a
record, and the rules of who is billed and who used the block.

The generated dialplan tells each call's record what it needs (templates/dialplan):
the owner of the block the call goes over is the channel's accountcode (set when the
call is routed, so a block moved or reset during the call stays billed as it was at
the start), and CDR variables name the PBX that used the block, the block, the
direction and our number on the carrier side. A call between two phones of a PBX sets
none of them: it is internal, the PBX's own (its phones' accountcode)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import UTC, datetime

# The order of the fields in a spool line: cdr_custom.conf's mapping says the same.
FIELDS = (
    "uniqueid", "linkedid", "sequence", "start", "answer", "end", "duration", "billsec",
    "disposition", "accountcode", "pbx", "block", "direction", "number", "peer",
)  # fmt: skip
DIRECTIONS = ("inbound", "outbound", "internal")
DISPOSITIONS = ("ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION")
_ID = re.compile(r"^[A-Za-z0-9._-]{1,150}$")
_NAME = re.compile(r"^[A-Za-z0-9._+*#-]{0,80}$")
_EPOCH = re.compile(r"^\d{1,12}(\.\d{1,6})?$")


class BadRecord(ValueError):
    """A spool line that is not a record of ours (logged, counted, skipped)."""


@dataclass(frozen=True)
class CallRecord:
    uniqueid: str
    sequence: int
    linkedid: str
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime
    duration: int
    billsec: int
    disposition: str
    direction: str
    number: str | None  # ours, on the carrier side: called (inbound), calling (outbound)
    peer: str | None  # the other party's number
    owner: str | None  # billed to (None: a call no block of ours took, refused)
    pbx: str | None  # the PBX that used the block
    block_id: str | None


def _when(text: str, field: str, *, optional: bool = False) -> datetime | None:
    # Unanswered: Asterisk writes an empty answer time, or 0.
    if optional and text in ("", "0", "0.000000"):
        return None
    if not _EPOCH.fullmatch(text):
        raise BadRecord(f"{field} is not a time: {text[:40]!r}")
    return datetime.fromtimestamp(float(text), UTC)


def _count(text: str, field: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise BadRecord(f"{field} is not a count of seconds: {text[:40]!r}")
    return int(text)


def _name(text: str, field: str) -> str | None:
    if not _NAME.fullmatch(text):
        raise BadRecord(f"{field} has characters no name of ours has: {text[:40]!r}")
    return text or None


def parse_line(line: str) -> CallRecord:
    """One spool line (without its line end) as a record; BadRecord if it is not one."""
    try:
        rows = list(csv.reader([line], strict=True))
    except csv.Error as exc:
        raise BadRecord(f"not a CSV line: {exc}") from None
    values = rows[0] if rows else []
    if len(values) != len(FIELDS):
        raise BadRecord(f"{len(values)} fields, not {len(FIELDS)}")
    f = dict(zip(FIELDS, values, strict=True))
    for key in ("uniqueid", "linkedid"):
        if not _ID.fullmatch(f[key]):
            raise BadRecord(f"{key} is not an Asterisk id: {f[key][:40]!r}")
    if f["disposition"] not in DISPOSITIONS:
        raise BadRecord(f"unknown disposition {f['disposition'][:40]!r}")
    direction = f["direction"] or "internal"
    if direction not in DIRECTIONS:
        raise BadRecord(f"unknown direction {direction[:40]!r}")
    owner = _name(f["accountcode"], "accountcode")
    started = _when(f["start"], "start")
    ended = _when(f["end"], "end")
    assert started is not None and ended is not None
    return CallRecord(
        uniqueid=f["uniqueid"],
        sequence=_count(f["sequence"], "sequence"),
        linkedid=f["linkedid"],
        started_at=started,
        answered_at=_when(f["answer"], "answer", optional=True),
        ended_at=ended,
        duration=_count(f["duration"], "duration"),
        billsec=_count(f["billsec"], "billsec"),
        disposition=f["disposition"],
        direction=direction,
        number=_name(f["number"], "number"),
        peer=_name(f["peer"], "peer"),
        owner=owner,
        # Internal: the PBX's own call, its phones' accountcode.
        pbx=_name(f["pbx"], "pbx") or (owner if direction == "internal" else None),
        block_id=_name(f["block"], "block"),
    )
