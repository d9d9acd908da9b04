"""`make test-fast` starts no Asterisk, no Kamailio, no dockerd and no sipp: its tests
are chosen by markers, and whatever a wrongly marked test would start fails it instead
(tests/tier.py). These run in the fast tier themselves."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from fixtures_lab import LAB
from tier import VARIABLE, refuse_in_fast_tier

ROOT = Path(__file__).resolve().parent.parent


def test_make_test_fast_sets_the_tier_and_leaves_out_every_starting_marker() -> None:
    makefile = (ROOT / "Makefile").read_text()
    expression = re.search(r"^FAST_TIER = (.+)$", makefile, re.M)
    assert expression is not None
    assert set(re.findall(r"not (\w+)", expression.group(1))) == {
        "lab",
        "docker",
        "browser",
        "slow",
    }
    recipe = makefile.split("\ntest-fast:", 1)[1].split("\n\n", 1)[0]
    assert f'{VARIABLE}=fast $(BIN)/pytest -q -m "$(FAST_TIER)"' in recipe


def test_a_starter_fails_its_test_in_the_fast_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "fast")
    with pytest.raises(pytest.fail.Exception, match="make test-fast starts no Asterisk"):
        refuse_in_fast_tier("Asterisk")
    monkeypatch.setenv(VARIABLE, "")
    refuse_in_fast_tier("Asterisk")  # the whole suite: allowed


@pytest.mark.parametrize("command", [["up"], ["router-up"]])
def test_the_lab_tool_starts_nothing_in_the_fast_tier(command: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [str(LAB), "--dir", str(tmp_path / "lab"), *command],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, VARIABLE: "fast"},
    )  # fmt: skip
    assert done.returncode != 0
    assert "make test-fast starts no Asterisk and no Kamailio" in done.stderr
    assert not (tmp_path / "lab").exists()
