"""`make run` does the main job: scripts/run-dev starts the lab's Asterisk as node
`default` (`pjsip: realtime`, the default: its phone read from the service's database)
with the service, a change through the API goes live there, and Ctrl-C (SIGINT
to the process group, as a terminal sends it) leaves no process and no mount behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_lab import LAB
from ports import free_port
from waiting import wait_until_sync

# It runs the lab through `make run`, not through the `lab` fixture: marked by hand.
pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent

DEV_KEY = "portal-dev-key"  # config/dev.yaml's public development key


def call(base: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 - http on loopback
        base + path, method=method, data=json.dumps(body).encode() if body else None,
        headers={"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return json.loads(response.read() or b"null")


def until(check: Any, seconds: float, what: str) -> Any:
    """wait_until_sync, with a connection refused counting as not yet."""

    def answered() -> Any:
        try:
            return check()
        except OSError:
            return None

    return wait_until_sync(answered, what, seconds, interval=0.2)


def test_make_run_applies_to_the_lab_and_ctrl_c_leaves_nothing() -> None:
    # A short folder: the embedded PostgreSQL's socket path must fit in 107 bytes.
    tmp_path = Path(tempfile.mkdtemp(prefix="prov-run-", dir="/tmp"))
    try:
        run_and_interrupt(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def run_and_interrupt(tmp_path: Path) -> None:
    port = free_port()
    config = yaml.safe_load((ROOT / "config" / "dev.yaml").read_text())
    config["listen"]["port"] = port
    config["public_base_url"] = f"http://127.0.0.1:{port}"
    config["data_dir"] = str(tmp_path / "data")
    (tmp_path / "dev.yaml").write_text(yaml.safe_dump(config))
    lab_dir = tmp_path / "lab"
    env = {
        **os.environ, "CONFIG": str(tmp_path / "dev.yaml"), "LAB_DIR": str(lab_dir),
        "LAB_AMI_PORT": str(free_port()), "LAB_SIP_PORT": str(free_port()),
    }  # fmt: skip
    run = subprocess.Popen(
        [str(ROOT / "scripts" / "run-dev")], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        until(lambda: urllib.request.urlopen(base + "/healthz", timeout=2).status == 200,  # noqa: S310
              120, "the service did not come up")  # fmt: skip
        call(base, "PUT", "/v1/accounts/K100200",
             {"name": "Spree", "email": "it@spree.example", "language": "de"})  # fmt: skip
        call(base, "PUT", "/v1/accounts/K100200/pbx")
        call(base, "PUT", "/v1/accounts/K100200/blocks/ber-main",
             {"number": "+4930123456", "range": "0-99", "mode": "pbx"})  # fmt: skip
        call(base, "PUT", "/v1/accounts/K100200/pbx/extensions/100",
             {"name": "Anna", "site_block": "ber-main"})  # fmt: skip
        until(lambda: call(base, "GET", "/v1/accounts/K100200/pbx/config")["apply_state"]
              == "applied", 60, "not applied to the lab")  # fmt: skip
        shown = subprocess.run(
            [str(LAB), "--dir", str(lab_dir), "cli", "dialplan show +49301234567@carrier-in"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert "k100200-in-ber-main" in shown.stdout, shown.stdout + shown.stderr
        # A realtime node: Anna's endpoint is a row, read through the node's own login.
        assert json.loads((lab_dir / "lab.json").read_text())["pjsip"] == "realtime"
        endpoint = subprocess.run(
            [str(LAB), "--dir", str(lab_dir), "cli", "pjsip show endpoint k100200-100"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert "Endpoint:  k100200-100" in endpoint.stdout, endpoint.stdout + endpoint.stderr
    finally:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
        output, _ = run.communicate(timeout=60)
    assert "the lab's Asterisk is node 'default'" in output, output
    assert "the lab's Asterisk is stopped" in output, output
    status = subprocess.run([str(LAB), "--dir", str(lab_dir), "status"],
                            capture_output=True, timeout=30, check=False)  # fmt: skip
    assert status.returncode == 3  # not running
    assert str(lab_dir) not in Path("/proc/mounts").read_text()
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    leftover = [
        subprocess.run(
            ["ps", "-o", "pid,ppid,stat,args", "-p", pid],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for pid in left.stdout.split()
    ]
    assert left.stdout == "", leftover
