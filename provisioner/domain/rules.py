"""The shape of every identifier and the choices of every enumerated field, declared once.

The services, the middlewares, the mail and the settings use these; the OpenAPI
document (which request bodies are validated against, api/body.py) and the database's
CHECK constraints are tested against them (tests/test_contract.py), so a rule changed
here and nowhere else fails a test.

Lengths follow from Asterisk: a dialplan context name has at most 79 characters (80
with the terminating NUL). The longest generated name is <slug>-trunk-<block>
(domain/names.py), where the slug is the customer number in lower case.

The patterns are written `^...$` because the OpenAPI document (ECMA regex) and the SQL
CHECKs (POSIX regex) use the same text, and there `$` is the end of the string. In
Python `$` also matches before a final newline: test them with `fullmatch`, never
`match` or `search`.
"""

from __future__ import annotations

import re
import unicodedata

MAX_CONFIG_NAME = 79
CUSTOMER_MAX = 32
LONGEST_BLOCK_INFIX = "-trunk-"
BLOCK_ID_MAX = MAX_CONFIG_NAME - CUSTOMER_MAX - len(LONGEST_BLOCK_INFIX)

CUSTOMER = re.compile(rf"^[A-Za-z0-9]{{2,{CUSTOMER_MAX}}}$")
BLOCK_ID = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{BLOCK_ID_MAX - 1}}}$")
# Extensions and ring groups: 2 to 5 digits, never starting with 0 (the outside line).
EXTENSION = re.compile(r"^[1-9][0-9]{1,4}$")
# Asterisk node names and pickup group names.
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
TRUNK_USER = re.compile(r"^[A-Za-z0-9._+-]{1,64}$")

# Enumerated fields.
LANGUAGES = ("de", "en")  # of accounts, and so of their mails
MODES = ("standard", "pbx")  # of blocks
STRATEGIES = ("ringall", "hunt")  # of ring groups

# Whole numbers in query parameters (cursors, limits, revisions): ASCII digits only
# (str.isdigit() also takes "²", which int() refuses).
DIGITS = re.compile(r"[0-9]+")


# Names people give (accounts, extensions, ring groups) are shown in mails, pages and
# caller IDs. Control, format and separator characters are refused in every text field
# (api/body.py); a name must besides show something, and hold nothing a mail header reads
# as structure.
# Letters (category Lo) and symbols that render as nothing: Hangul fillers, the blank
# Braille pattern, Khmer and Mongolian vowel signs inherent.
BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800\u17b4\u17b5\u180e")
# An RFC 2047 encoded word starts so (`=?utf-8?q?...?=`); a mail reader decodes it, and a
# decoded CR LF in a subject once became a header of its own (mail/sender.py).
ENCODED_WORD = "=?"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a name, or None: it must hold a visible character (a letter,
    digit, punctuation or symbol that is not blank-looking) and no encoded-word start."""
    if not any(unicodedata.category(c)[0] in "LNPS" and c not in BLANK_LOOKING for c in name):
        return "must hold a visible character"
    if ENCODED_WORD in name:
        return f"must not hold {ENCODED_WORD!r} (mail readers decode what follows it)"
    return None
