"""A spool line read into a call record (domain/usage.parse_line), field by field and at
each limit: what is taken, what is refused and what the refusal says (the import logs
it, so an engineer finds the line). Pure: no database, no Asterisk."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from provisioner.domain.usage import DISPOSITIONS, FIELDS, BadRecord, parse_line

ROOT = Path(__file__).resolve().parent.parent

GOOD = {
    "uniqueid": "1793955600.12", "linkedid": "1793955600.10", "sequence": "3",
    "start": "1793955600.000000", "answer": "1793955602.500000", "end": "1793955644.000000",
    "duration": "44", "billsec": "41", "disposition": "ANSWERED", "accountcode": "K200300",
    "pbx": "K100200", "block": "muc-main", "direction": "inbound", "number": "+49891234560",
    "peer": "+4940999999",
}  # fmt: skip


def line(**changed: str) -> str:
    values = {**GOOD, **changed}
    return ",".join('"' + values[f].replace('"', '""') + '"' for f in FIELDS)


def refused(text: str) -> str:
    with pytest.raises(BadRecord) as caught:
        parse_line(text)
    return str(caught.value)


def test_the_fields_are_in_the_order_cdr_custom_writes_them() -> None:
    mapping = (ROOT / "asterisk-docker/conf/cdr_custom.conf").read_text()
    written = re.findall(r"\$\{CDR\((\w+)", mapping.split("=>", 1)[1])
    assert tuple(written) == FIELDS


def test_every_field_lands_where_it_belongs() -> None:
    r = parse_line(line())
    assert (r.uniqueid, r.linkedid, r.sequence) == ("1793955600.12", "1793955600.10", 3)
    assert r.started_at == datetime(2026, 11, 6, 9, 0, tzinfo=UTC)
    assert r.answered_at == datetime(2026, 11, 6, 9, 0, 2, 500000, tzinfo=UTC)
    assert r.ended_at == datetime(2026, 11, 6, 9, 0, 44, tzinfo=UTC)
    assert (r.duration, r.billsec, r.disposition) == (44, 41, "ANSWERED")
    assert (r.owner, r.pbx, r.block_id) == ("K200300", "K100200", "muc-main")
    assert (r.direction, r.number, r.peer) == ("inbound", "+49891234560", "+4940999999")


@pytest.mark.parametrize("disposition", DISPOSITIONS)
def test_each_disposition_asterisk_writes_is_taken(disposition: str) -> None:
    assert parse_line(line(disposition=disposition)).disposition == disposition


@pytest.mark.parametrize("unanswered", ["", "0", "0.000000"])
def test_an_unanswered_call_has_no_answer_time(unanswered: str) -> None:
    assert parse_line(line(answer=unanswered)).answered_at is None


def test_a_start_at_the_epoch_is_a_time_not_a_missing_one() -> None:
    assert parse_line(line(start="0")).started_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_line(line(answer="0.5")).answered_at == datetime(1970, 1, 1, 0, 0, 0, 500000,
                                                                  tzinfo=UTC)  # fmt: skip


def test_who_used_the_block() -> None:
    # A call between two phones sets no usage variables: internal, the PBX's own.
    internal = parse_line(line(pbx="", block="", direction="", number="", peer=""))
    assert (internal.direction, internal.pbx, internal.block_id) == ("internal", "K200300", None)
    assert (internal.number, internal.peer) == (None, None)
    # Named internal with its PBX: that PBX.
    assert parse_line(line(direction="internal")).pbx == "K100200"
    # A call over a block that names no PBX is nobody's use, whoever is billed.
    assert parse_line(line(pbx="")).pbx is None
    assert parse_line(line(direction="outbound", pbx="")).pbx is None
    # A call no block of ours took (refused): billed to nobody.
    assert parse_line(line(accountcode="")).owner is None


@pytest.mark.parametrize(
    ("changed", "said"),
    [
        ({"uniqueid": ""}, "uniqueid is not an Asterisk id: ''"),
        ({"uniqueid": "a" * 151}, f"uniqueid is not an Asterisk id: {'a' * 40!r}"),
        ({"linkedid": "1.2 3"}, "linkedid is not an Asterisk id: '1.2 3'"),
        ({"disposition": "MAYBE"}, "unknown disposition 'MAYBE'"),
        ({"disposition": "answered"}, "unknown disposition 'answered'"),
        ({"direction": "sideways"}, "unknown direction 'sideways'"),
        ({"accountcode": "K2 00"}, "accountcode has characters no name of ours has: 'K2 00'"),
        (
            {"accountcode": "K" * 81},
            f"accountcode has characters no name of ours has: {'K' * 40!r}",
        ),
        ({"pbx": "a;b"}, "pbx has characters no name of ours has: 'a;b'"),
        ({"block": "m/x"}, "block has characters no name of ours has: 'm/x'"),
        ({"number": "+49=1"}, "number has characters no name of ours has: '+49=1'"),
        ({"peer": "1|2"}, "peer has characters no name of ours has: '1|2'"),
        ({"start": "yesterday"}, "start is not a time: 'yesterday'"),
        ({"start": "1" * 13}, f"start is not a time: {'1' * 13!r}"),
        ({"start": "1.1234567"}, "start is not a time: '1.1234567'"),
        ({"start": ""}, "start is not a time: ''"),
        ({"end": "-1"}, "end is not a time: '-1'"),
        ({"answer": "soon"}, "answer is not a time: 'soon'"),
        ({"sequence": "-3"}, "sequence is not a count of seconds: '-3'"),
        ({"duration": "4.0"}, "duration is not a count of seconds: '4.0'"),
        ({"billsec": "1" * 10}, f"billsec is not a count of seconds: {'1' * 10!r}"),
        ({"billsec": ""}, "billsec is not a count of seconds: ''"),
    ],
)
def test_a_bad_field_is_named_with_its_value(changed: dict[str, str], said: str) -> None:
    assert refused(line(**changed)) == said


def test_a_line_of_another_shape_is_refused_with_its_count() -> None:
    assert refused(line() + ',"extra"') == "16 fields, not 15"
    assert refused(line().rsplit(",", 1)[0]) == "14 fields, not 15"
    assert refused("") == "0 fields, not 15"
    assert refused('"unterminated').startswith("not a CSV line: ")


def test_the_limits_themselves_are_taken() -> None:
    r = parse_line(line(uniqueid="a-b_c." + "x" * 144, accountcode="K" * 80,
                        number="+*#49", start="1" * 12 + ".123456", billsec="9" * 9))  # fmt: skip
    assert len(r.uniqueid) == 150 and r.owner == "K" * 80 and r.number == "+*#49"
    assert r.billsec == 999_999_999
    assert r.started_at == datetime.fromtimestamp(111111111111.123456, UTC)
