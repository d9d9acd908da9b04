"""Numbers and blocks: pure rules, no I/O."""

from __future__ import annotations

import itertools

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


# The field a refusal names is the portal's contract as much as the code (mutation
# testing found both unchecked here): (number, range, code, field).
FIELDS = [
    ("4989123456", None, "invalid_number", "number"),
    ("+4900012345", None, "invalid_number", "number"),  # E.164 in form, no such number
    ("+4989123456", "a-b", "invalid_range", "range"),
    ("+4989123456", "9-0", "invalid_range", "range"),
    ("+4989123456", "5-5x", "invalid_range", "range"),
    ("+498912345678", "0-9999", "invalid_range", "range"),  # 12 + 4 digits: 16 > 15
    ("+4915112345678", None, "not_geographic", "number"),
    ("+33142345678", None, "foreign_number", "number"),
    ("+4989123456", "0-99999", "invalid_range", "range"),
]


@pytest.mark.parametrize(("number", "range_text", "code", "field"), FIELDS)
def test_refusals_name_their_field(
    number: str, range_text: str | None, code: str, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_block(number, range_text, "DE")
    assert (caught.value.code, caught.value.field) == (code, field)
    assert caught.value.detail and caught.value.detail == str(caught.value)


def test_fifteen_digits_in_all_are_accepted() -> None:
    block = parse_block("+4989123456", "0-9999", "DE")  # 10 + 4 digits
    assert block.last_number() == "+49891234569999" and len(block.last_number()) == 15
    assert block.country_code == 49


def test_a_range_of_one_number_and_mixed_widths() -> None:
    single = parse_block("+4989123456", "5-5", "DE")
    assert single.numbers() == ["+49891234565"] and single.size() == 1
    mixed = parse_block("+4989123456", "5-123", "DE")
    spans = mixed.spans()
    assert [(s.digits, s.first, s.last) for s in spans] == [
        (11, 49891234565, 49891234569),
        (12, 498912345610, 498912345699),
        (13, 4989123456100, 4989123456123),
    ]
    assert mixed.size() == 5 + 90 + 24
    assert mixed.first_number() == "+49891234565" and mixed.last_number() == "+4989123456123"
    # A span of one width whose low end is above its high end is left out.
    assert parse_block("+4989123456", "50-99", "DE").size() == 50


def test_a_block_without_range_is_one_number() -> None:
    block = parse_block("+4989123456", None, "DE")
    assert block.range_text is None and block.numbers() == ["+4989123456"]
    assert block.spans()[0].first == block.spans()[0].last == 4989123456


def test_a_block_has_the_fewest_router_keys_that_cover_exactly_its_numbers() -> None:
    from provisioner.domain.numbers import routing_candidates, routing_keys

    unpadded = parse_block("+4989123456", "0-99", "DE")
    assert unpadded.routing_keys() == [
        "+4989123456/11",
        *(f"+4989123456{d}/12" for d in range(1, 10)),
    ]
    assert parse_block("+49891000", "0000-9999", "DE").routing_keys() == ["+49891000/12"]
    assert parse_block("+4989123456", None, "DE").routing_keys() == ["+4989123456/10"]
    # The router's order: the number itself first, then ever shorter prefixes.
    assert routing_candidates("+49891234567")[:2] == ["+49891234567/11", "+4989123456/11"]
    # Exactly the numbers: every number of a span and its neighbours, in odd ranges.
    for first, last in ((5, 37), (0, 0), (19, 2101), (100, 9999), (0, 9999)):
        block = parse_block("+4989123", f"{first}-{last}", "DE")
        keys = set(routing_keys(block.spans()))
        numbers = set(block.numbers())
        for width in range(1, 6):
            for n in {*range(0, 120), *range(max(0, last - 60), last + 60)}:
                candidate = f"+4989123{str(n).zfill(width)}"
                hit = any(k in keys for k in routing_candidates(candidate))
                assert hit == (candidate in numbers), (first, last, candidate)


def key_bounds(key: str) -> tuple[int, int, int]:
    """The numbers a router key stands for: first, last, and how many digits were cut."""
    prefix, digits = key.lstrip("+").split("/")
    cut = int(digits) - len(prefix)
    return int(prefix) * 10**cut, (int(prefix) + 1) * 10**cut - 1, cut


@pytest.mark.parametrize(
    ("first", "last", "digits"),
    [
        (4989000000000, 4989009999999, 13),  # ten million numbers: more than one key holds
        (4989123000, 4989123999, 10),
        (4989123005, 4989125037, 10),
        (49891, 49899, 5),
        (100, 999, 3),  # so short that no key may cut every digit
        (7, 7, 1),
    ],
)
def test_router_keys_tile_a_span_each_as_large_as_the_router_can_match(
    first: int, last: int, digits: int
) -> None:
    """routing_keys on a span itself: the keys lie end to end from its first number to
    its last; none cuts more than the router tries (ROUTING_WILDCARDS) or every digit;
    and none could be one cut larger, so there are no more keys than needed."""
    from provisioner.domain.numbers import ROUTING_WILDCARDS, Span, routing_keys

    keys = routing_keys([Span(first, last, digits)])
    bounds = [key_bounds(k) for k in keys]
    assert all(k.endswith(f"/{digits}") for k in keys)
    assert bounds[0][0] == first and bounds[-1][1] == last
    for (_, end, _), (start, _, _) in itertools.pairwise(bounds):
        assert start == end + 1, keys
    for low, _, cut in bounds:
        assert cut <= min(ROUTING_WILDCARDS, digits - 1), keys
        larger = 10 ** (cut + 1)
        could_grow = cut < min(ROUTING_WILDCARDS, digits - 1) and low % larger == 0
        assert not (could_grow and low + larger - 1 <= last), (low, cut, keys)


def test_the_router_tries_a_number_then_each_prefix_up_to_six_digits_shorter() -> None:
    from provisioner.domain.numbers import routing_candidates

    assert routing_candidates("+49891234567") == [
        "+49891234567/11", "+4989123456/11", "+498912345/11", "+49891234/11",
        "+4989123/11", "+498912/11", "+49891/11",
    ]  # fmt: skip
    # A short number: down to its first digit, never to nothing.
    assert routing_candidates("+4912") == ["+4912/4", "+491/4", "+49/4", "+4/4"]
