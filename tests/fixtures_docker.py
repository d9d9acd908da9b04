"""Docker's engine for the compose tests: the one that runs, or dockerd started here."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tier import refuse_in_fast_tier


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A running Docker engine (Debian's docker.io; make test installs it): the one that
    runs, or a `dockerd` started here and stopped after the session. One that cannot be
    had FAILS the tests, with why."""
    refuse_in_fast_tier("Docker engine")
    for tool in ("docker", "dockerd", "docker-compose"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install docker.io docker-compose"
                        " (scripts/install-system-deps does)")  # fmt: skip

    def engine_answers() -> bool:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
        return probe.returncode == 0

    if engine_answers():
        yield
        return
    log = Path(tempfile.mkdtemp(prefix="prov-dockerd-")) / "dockerd.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not engine_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(log.parent, ignore_errors=True)
