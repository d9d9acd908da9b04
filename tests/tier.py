"""The edit loop's tier, `make test-fast`, starts no Asterisk, no Kamailio, no dockerd and
no sipp. Tests are marked by the fixtures they use (conftest's MARKED_BY_FIXTURE), and a
marker can be missed (a fixture reached through `request.getfixturevalue` is invisible
to collection). So the tier is also enforced where those processes are started: under
`make test-fast` (PROVISIONER_TEST_TIER=fast) each starter fails the test, naming what it
would have started. The lab tool refuses the same way (asterisk-docker/lab)."""

from __future__ import annotations

import os

import pytest

VARIABLE = "PROVISIONER_TEST_TIER"


def refuse_in_fast_tier(what: str) -> None:
    if os.environ.get(VARIABLE) == "fast":
        pytest.fail(
            f"make test-fast starts no {what}: this test needs a `lab`, `docker` or `slow`"
            " marker (add its fixture to conftest's MARKED_BY_FIXTURE)",
            pytrace=False,
        )
