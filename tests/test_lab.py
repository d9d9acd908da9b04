"""The lab's real Asterisk 22: a sipp phone registers and calls, AMI reads and reloads."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_lab import Lab
from panoramisk import Manager
from sipp_peer import run_scenario


def endpoint(name: str, password: str, context: str) -> str:
    return f"""
[{name}]
type = aor
max_contacts = 1
remove_existing = yes

[{name}]
type = auth
auth_type = userpass
username = {name}
password = {password}

[{name}]
type = endpoint
context = {context}
disallow = all
allow = alaw,ulaw
auth = {name}
aors = {name}
"""


DIALPLAN = """
[labtest-phones]
exten => 600,1,Answer()
 same => n,Wait(10)
 same => n,Hangup()
"""


class LabFiles:
    """Config files a test puts into the lab's provisioner folder; removed afterwards."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.pjsip = lab.output_dir / "pjsip" / f"{name}.conf"
        self.dialplan = lab.output_dir / "dialplan" / f"{name}.conf"

    def write(self, pjsip: str, dialplan: str = "") -> None:
        for path, text in ((self.pjsip, pjsip), (self.dialplan, dialplan)):
            path.write_text(text)

    def remove(self) -> None:
        self.pjsip.unlink(missing_ok=True)
        self.dialplan.unlink(missing_ok=True)


@pytest.fixture
def config(lab: Lab, request: pytest.FixtureRequest) -> Iterator[LabFiles]:
    files = LabFiles(lab, f"labtest-{request.node.name[:40]}")
    yield files
    files.remove()
    lab.cli("module reload res_pjsip.so")
    lab.cli("dialplan reload")


async def reload(ami: Manager, module: str) -> None:
    reply = await ami.send_action({"Action": "Reload", "Module": module})
    assert reply.Response == "Success", reply


async def endpoint_names(ami: Manager) -> set[str]:
    reply: Any = await ami.send_action({"Action": "PJSIPShowEndpoints"}, as_list=True)
    return {m.ObjectName for m in reply if m.get("Event") == "EndpointList"}


def test_lab_runs_asterisk_22(lab: Lab) -> None:
    assert "Asterisk 22." in lab.cli("core show version")
    assert (lab.output_dir / "pjsip").is_dir() and (lab.output_dir / "dialplan").is_dir()


async def test_phone_registers_and_asterisk_answers_its_call(
    lab: Lab, ami: Manager, config: LabFiles
) -> None:
    password = secrets.token_urlsafe(16)
    config.write(endpoint("labtest100", password, "labtest-phones"), DIALPLAN)
    await reload(ami, "res_pjsip.so")
    await reload(ami, "pbx_config.so")

    registered = run_scenario(
        "register", remote_port=lab.sip_port, service="labtest100",
        username="labtest100", password=password, variables={"expires": "120"},
    )  # fmt: skip
    assert registered.ok, registered.evidence()
    assert registered.received_statuses() == [401, 200], registered.evidence()
    assert "labtest100" in lab.cli("pjsip show contacts")

    call = run_scenario(
        "call", remote_port=lab.sip_port, service="labtest100",
        username="labtest100", password=password, variables={"dial": "600"},
    )  # fmt: skip
    assert call.ok, call.evidence()
    statuses = call.received_statuses()
    assert 401 in statuses and 200 in statuses, call.evidence()
    answered = [m for m in call.messages if m.status == 200 and "INVITE" in m.headers["cseq"]]
    assert answered and "application/sdp" in answered[0].headers.get("content-type", "")


async def test_wrong_password_is_refused(lab: Lab, ami: Manager, config: LabFiles) -> None:
    config.write(endpoint("labtest101", secrets.token_urlsafe(16), "labtest-phones"), DIALPLAN)
    await reload(ami, "res_pjsip.so")
    refused = run_scenario(
        "register", remote_port=lab.sip_port, service="labtest101",
        username="labtest101", password="wrong", variables={"expires": "120"}, timeout=5,
    )  # fmt: skip
    assert not refused.ok
    assert 200 not in refused.received_statuses(), refused.evidence()


async def test_pjsip_show_endpoints_over_ami(lab: Lab, ami: Manager, config: LabFiles) -> None:
    config.write(endpoint("labtest200", "x" * 20, "labtest-phones"))
    await reload(ami, "res_pjsip.so")
    assert "labtest200" in await endpoint_names(ami)


async def test_reload_over_ami_sees_a_changed_config(
    lab: Lab, ami: Manager, config: LabFiles
) -> None:
    config.write(endpoint("labtest300", "x" * 20, "labtest-phones"), DIALPLAN)
    await reload(ami, "res_pjsip.so")
    await reload(ami, "pbx_config.so")
    assert {"labtest300"} <= await endpoint_names(ami)

    changed = DIALPLAN + "exten => 601,1,Answer()\n"
    config.write(endpoint("labtest301", "y" * 20, "labtest-phones"), changed)
    await reload(ami, "res_pjsip.so")
    await reload(ami, "pbx_config.so")
    names = await endpoint_names(ami)
    assert "labtest301" in names and "labtest300" not in names
    plan: Any = await ami.send_action(
        {"Action": "ShowDialPlan", "Context": "labtest-phones"}, as_list=True
    )
    extensions = {m.Extension for m in plan if m.get("Event") == "ListDialplan"}
    assert {"600", "601"} <= extensions


def test_lab_config_mirrors_the_docker_image() -> None:
    """The Dockerfile installs the very files the rootfs runner installs."""
    root = Path(__file__).resolve().parent.parent / "asterisk-docker"
    dockerfile = (root / "Dockerfile").read_text()
    assert "COPY conf/ /etc/asterisk/" in dockerfile
    assert "/etc/asterisk/provisioner" in dockerfile


def test_the_labs_asterisk_runs_with_the_docker_images_malloc_tunables(lab: Lab) -> None:
    """Asterisk's heap settings (two malloc arenas: its memory stays flat over full
    rounds, README) are in the running Asterisk's environment, and they are the
    Dockerfile's: the lab and the image cannot drift apart."""
    root = Path(__file__).resolve().parent.parent / "asterisk-docker"
    image = re.search(r"^ENV GLIBC_TUNABLES=(\S+)$", (root / "Dockerfile").read_text(), re.M)
    assert image is not None, "the Dockerfile sets no GLIBC_TUNABLES"
    pid = json.loads((lab.folder / "lab.json").read_text())["pid"]
    assert Path(f"/proc/{pid}/exe").resolve().name == "asterisk"
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"GLIBC_TUNABLES={image.group(1)}".encode() in environ
