"""The package as operators get it: a wheel, installed into a fresh venv outside the
work tree, renders a PBX (the templates travel inside it), and the compose lab's
provisioner is configured to apply to the compose Asterisk."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml
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


def test_the_compose_provisioner_applies_to_the_compose_asterisk() -> None:
    """No Docker engine here: the compose file and the provisioner's config in it are
    read as compose would, and must name the Asterisk service's AMI (with the secret
    both get from the same variable) and its config folder."""
    compose = yaml.safe_load((ROOT / "asterisk-docker" / "compose.yaml").read_text())
    services = compose["services"]
    asterisk, provisioner = services["asterisk"], services["provisioner"]
    environment = provisioner["environment"]
    nodes = yaml.safe_load(environment["PROVISIONER_ASTERISK_NODES"])
    (node,) = nodes
    # Both share the host's loopback (network_mode: host), as the lab does.
    assert asterisk["network_mode"] == provisioner["network_mode"] == "host"
    assert node["ami_host"] == "127.0.0.1"
    assert str(node["ami_port"]) == asterisk["environment"]["AMI_PORT"]
    assert node["ami_username"] == "provisioner"  # the image's AMI_USER
    # The secret: one variable, given to both (compose refuses to start without it).
    assert asterisk["environment"]["AMI_SECRET"].startswith("${AMI_SECRET:?")
    assert node["ami_secret"] == "${AMI_SECRET}"
    assert node["file_group"] == 2000
    assert "--gid 2000 asterisk" in (ROOT / "asterisk-docker" / "Dockerfile").read_text()
    # The provisioner writes where Asterisk includes from: one volume, two mount points.
    written = [v for v in provisioner["volumes"] if v.endswith(":" + node["output_dir"])]
    (volume,) = written
    name = volume.split(":")[0]
    assert any(v == f"{name}:/etc/asterisk/provisioner" for v in asterisk["volumes"])
    assert provisioner["depends_on"]["asterisk"]["condition"] == "service_healthy"
