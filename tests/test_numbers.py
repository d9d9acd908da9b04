"""Numbers and blocks: pure rules, no I/O."""

from __future__ import annotations

import pytest

from provisioner.domain.errors import InvalidInput
from provisioner.domain.numbers import LENGTH_FACTOR, describe, parse_block


@pytest.mark.parametrize(
    ("number", "area"),
    [
        ("+4930123456", "30"),
        ("+4989123456", "89"),
        ("+4922112345", "221"),
        ("+49622112345", "6221"),
        ("+493305612345", "33056"),
    ],
)
def test_area_codes_of_two_to_five_digits(number: str, area: str) -> None:
    assert parse_block(number, None, "DE").area_code == area


def test_range_zero_to_ninety_nine_is_unpadded() -> None:
    block = parse_block("+4989123456", "0-99", "DE")
    numbers = block.numbers()
    assert numbers[0] == "+49891234560" and numbers[-1] == "+498912345699"
    assert len(numbers) == block.size() == 100
    assert "+49891234569" in numbers and "+498912345610" in numbers
    assert describe(block) == "+49 89 123456 0-99"


def test_padded_range_has_one_length() -> None:
    block = parse_block("+4989123456", "00-99", "DE")
    assert block.numbers()[0] == "+498912345600" and block.size() == 100
    assert [s.digits for s in block.spans()] == [12]


def test_span_keys_keep_lengths_apart() -> None:
    short = parse_block("+49891234560", None, "DE").spans()[0].key_range()
    long = parse_block("+498912345600", None, "DE").spans()[0].key_range()
    assert short[0] // LENGTH_FACTOR == 11 and long[0] // LENGTH_FACTOR == 12


@pytest.mark.parametrize(
    ("number", "range_text", "code"),
    [
        ("4989123456", None, "invalid_number"),
        ("+49 89 123456", None, "invalid_number"),
        ("+4989123456\n[evil]", None, "invalid_number"),
        ("+4915112345678", None, "not_geographic"),
        ("+4918012345678", None, "not_geographic"),
        ("+33142345678", None, "foreign_number"),
        ("+4989123456", "9-0", "invalid_range"),
        ("+4989123456", "10-9", "invalid_range"),
        ("+4989123456", "12345-99999", "invalid_range"),
        ("+4989123456", "a-b", "invalid_range"),
        ("+4989123456", 7, "invalid_range"),
    ],
)
def test_refused_blocks(number: str, range_text: object, code: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_block(number, range_text, "DE")
    assert caught.value.code == code
