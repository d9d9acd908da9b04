"""The package as operators get it: a wheel, installed into a fresh venv outside the
work tree, renders a PBX (the templates travel inside it). The compose stack, built and
run for real, is tests/test_compose.py."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import sysconfig
from pathlib import Path

from pbx_rows import CARRIER, PASSWORDS, two_site_pbx

from provisioner.render.render import node_files, pbx_files
from provisioner.render.view import build

ROOT = Path(__file__).resolve().parent.parent

RENDER = """
import json, pickle, sys
import provisioner
from provisioner.render.render import node_files, pbx_files
view, carrier = pickle.load(open(sys.argv[1], "rb"))
files = {**pbx_files(view, carrier), **node_files(carrier)}
print(json.dumps({"package": provisioner.__file__, "files": files}))
"""


def test_a_wheel_in_a_fresh_venv_renders_a_pbx(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--quiet", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("provisioner-*.whl")

    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)  # not this venv
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # Its dependencies from this venv's site-packages, by a plain path: a .pth line does
    # not run the .pth files of that folder, so the editable install stays out of sight.
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    pbx, used, extensions, groups = two_site_pbx()
    view = build(pbx, "Spree Logistik GmbH", used, extensions, groups, PASSWORDS)
    (tmp_path / "view.pickle").write_bytes(pickle.dumps((view, CARRIER)))
    rendered = subprocess.run(
        [str(python), "-c", RENDER, str(tmp_path / "view.pickle")],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    answer = json.loads(rendered.stdout)
    assert answer["package"].startswith(str(site)), answer["package"]
    assert answer["files"] == {**pbx_files(view, CARRIER), **node_files(CARRIER)}
