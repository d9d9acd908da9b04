"""Phone numbers and number blocks: E.164 parsing, area codes, ranges, overlap keys.

A block is a base number alone, or a base number with an extension range
("+4989123456" with "0-99" is +49891234560 to +498912345699). Extensions are
written without padding, so "0-99" holds one-digit and two-digit numbers; "00-99"
holds only two-digit ones. German numbering is open, so both occur.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType

from provisioner.domain.errors import InvalidInput

E164 = re.compile(r"^\+[1-9][0-9]{5,14}$")
RANGE = re.compile(r"^([0-9]{1,4})-([0-9]{1,4})$")
MAX_DIGITS = 15
# A span key puts the digit count in front of the number, so that numbers of
# different lengths never compare as overlapping (+49891234560 is not +498912345600).
LENGTH_FACTOR = 10**MAX_DIGITS

GEOGRAPHIC = {PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE}


@dataclass(frozen=True)
class Span:
    """Numbers of one digit count, first to last inclusive, as E.164 digits without '+'."""

    first: int
    last: int
    digits: int

    def key_range(self) -> tuple[int, int]:
        """Inclusive bounds of this span in the database's overlap index."""
        base = self.digits * LENGTH_FACTOR
        return base + self.first, base + self.last


# The SIP router's keys: a key stands for every number of one length that starts with
# a prefix, written `+<prefix>/<length in digits>`. The router tries the called number
# with up to ROUTING_WILDCARDS last digits cut off (asterisk-docker/router), longest
# prefix first; so one key covers at most 10**ROUTING_WILDCARDS numbers.
ROUTING_WILDCARDS = 6


def routing_key(prefix: str, digits: int) -> str:
    return f"+{prefix}/{digits}"


def routing_keys(spans: list[Span]) -> list[str]:
    """The fewest keys that cover exactly the spans' numbers: each span cut into runs
    aligned on powers of ten (0-99 at one length is one key; 10-99 is nine)."""
    keys = []
    for span in spans:
        low = span.first
        while low <= span.last:
            cut = 0
            while (
                cut < ROUTING_WILDCARDS
                and cut < span.digits - 1
                and low % 10 ** (cut + 1) == 0
                and low + 10 ** (cut + 1) - 1 <= span.last
            ):
                cut += 1
            keys.append(routing_key(str(low // 10**cut).zfill(span.digits - cut), span.digits))
            low += 10**cut
    return keys


def routing_candidates(number: str) -> list[str]:
    """The keys the router tries for a called E.164 number, in its order."""
    digits = number.lstrip("+")
    cuts = range(min(ROUTING_WILDCARDS, len(digits) - 1) + 1)
    return [routing_key(digits[: len(digits) - cut], len(digits)) for cut in cuts]


@dataclass(frozen=True)
class Block:
    """A validated block: its base number, optional range, and what phonenumbers says of it."""

    base: str
    range_first: str | None
    range_last: str | None
    country_code: int
    area_code: str

    @property
    def range_text(self) -> str | None:
        if self.range_first is None:
            return None
        return f"{self.range_first}-{self.range_last}"

    def spans(self) -> list[Span]:
        digits = self.base[1:]
        if self.range_first is None or self.range_last is None:
            n = int(digits)
            return [Span(n, n, len(digits))]
        first, last = self.range_first, self.range_last
        spans = []
        # One span per extension length: "0-99" is 0..9 (one digit) and 10..99 (two).
        for width in range(len(first), len(last) + 1):
            low = int(first) if width == len(first) else 10 ** (width - 1)
            high = int(last) if width == len(last) else 10**width - 1
            if low > high:
                continue
            total = len(digits) + width
            spans.append(
                Span(
                    int(digits + str(low).zfill(width)), int(digits + str(high).zfill(width)), total
                )
            )
        return spans

    def routing_keys(self) -> list[str]:
        return routing_keys(self.spans())

    def numbers(self) -> list[str]:
        """Every E.164 number of the block, in order."""
        return [
            "+" + str(n).zfill(span.digits)
            for span in self.spans()
            for n in range(span.first, span.last + 1)
        ]

    def first_number(self) -> str:
        return self.numbers()[0]

    def last_number(self) -> str:
        return self.numbers()[-1]

    def size(self) -> int:
        return sum(span.last - span.first + 1 for span in self.spans())


def _parse_geographic(number: str, country: str, field: str) -> phonenumbers.PhoneNumber:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        raise InvalidInput(f"{number!r} is not a phone number", field=field) from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidInput(f"{number} is not a valid number", field=field, code="invalid_number")
    if phonenumbers.region_code_for_number(parsed) != country:
        raise InvalidInput(
            f"{number} is not a number of {country}", field=field, code="foreign_number"
        )
    if phonenumbers.number_type(parsed) not in GEOGRAPHIC:
        raise InvalidInput(
            f"{number} is not a geographic (fixed line) number",
            field=field,
            code="not_geographic",
        )
    return parsed


def area_code_of(number: str) -> str:
    """The geographic area code without the national prefix: '89' for +4989123456."""
    parsed = phonenumbers.parse(number, None)
    length = phonenumbers.length_of_geographical_area_code(parsed)
    return phonenumbers.national_significant_number(parsed)[:length]


def parse_block(number: object, range_text: object, country: str) -> Block:
    """Validate a block as the portal sends it; raise InvalidInput naming the field."""
    if not isinstance(number, str) or not E164.fullmatch(number):
        raise InvalidInput(
            "number must be in E.164 form, for example +4989123456",
            field="number",
            code="invalid_number",
        )
    first = last = None
    if range_text is not None:
        if not isinstance(range_text, str) or not (match := RANGE.fullmatch(range_text)):
            raise InvalidInput(
                "range must be FIRST-LAST with up to 4 digits each, for example 0-99",
                field="range",
                code="invalid_range",
            )
        first, last = match.group(1), match.group(2)
        if len(first) > len(last) or (len(first) == len(last) and first > last):
            raise InvalidInput("range must not run backwards", field="range", code="invalid_range")
        if len(number) - 1 + len(last) > MAX_DIGITS:
            raise InvalidInput(
                "number and range together exceed 15 digits", field="range", code="invalid_range"
            )
    parsed = _parse_geographic(number, country, "number")
    block = Block(number, first, last, int(parsed.country_code or 0), area_code_of(number))
    if first is not None:
        # Both ends must be real numbers of the same area: a range must not leave it.
        for end in (block.first_number(), block.last_number()):
            _parse_geographic(end, country, "range")
            if area_code_of(end) != block.area_code:
                raise InvalidInput(
                    f"{end} is outside area code {block.area_code}",
                    field="range",
                    code="invalid_range",
                )
    if not block.area_code:
        raise InvalidInput(f"{number} has no area code", field="number", code="not_geographic")
    return block


def describe(block: Block) -> str:
    """How people write the block: '+49 89 123456 0-99'."""
    parsed = phonenumbers.parse(block.base, None)
    text = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return f"{text} {block.range_text}" if block.range_text else text
