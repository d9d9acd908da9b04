"""The tests' shared fixtures, one module per concern (fixtures_*.py, registered
below), and the test tiers: a test is marked by what it uses."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "fixtures_db",
    "fixtures_mail",
    "fixtures_service",
    "fixtures_lab",
    "fixtures_docker",
]

# A test is marked by what it uses: one that asks, directly or through other fixtures,
# for the lab or for Docker's engine is `lab` or `docker`, whatever file it is in.
# `make test-fast` leaves those out, and `browser` and `slow` (fixed-duration) ones too.
MARKED_BY_FIXTURE = {
    "lab": "lab",
    "second_lab": "lab",
    "realtime_lab": "lab",
    "mode_lab": "lab",  # reaches its lab through request.getfixturevalue
    "docker_engine": "docker",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, marker in MARKED_BY_FIXTURE.items():
            if fixture in used:
                item.add_marker(marker)
