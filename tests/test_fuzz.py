"""The API fuzzed from its own OpenAPI document (schemathesis), as each role sees it:
no 5xx, and every answer valid against the document (status, content type, headers,
body schema). Time-bounded and seeded, so a run is repeatable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from fixtures_mail import Inbox
from fixtures_service import ENGINEER_KEY, PORTAL_KEY, Api
from helpers import request_assignment, scene

pytestmark = pytest.mark.slow  # 40 s a role, whatever it finds

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
SECONDS_PER_ROLE = 40
# One worker: with several threads, hypothesis' lambda-source lookup on this CPython
# (3.11.7) now and then fails inside schemathesis ("AST constructor recursion depth
# mismatch"), a runtime error of the tool that would fail the run for nothing of ours.


@pytest.mark.parametrize("key", [PORTAL_KEY, ENGINEER_KEY, ""], ids=["portal", "engineer", "none"])
async def test_the_api_holds_to_its_document_under_fuzzing(
    service: TestClient[Any, Any], api: Api, inbox: Inbox, key: str, tmp_path: Path
) -> None:
    await scene(api)  # real accounts, blocks and an assignment to find, besides the noise
    await request_assignment(api, inbox)
    url = f"http://127.0.0.1:{service.server.port}/openapi.json"
    command = [
        str(SCHEMATHESIS), "run", url, "--checks", CHECKS,
        "--max-time", str(SECONDS_PER_ROLE), "--workers", "1", "--seed", "20261129",
        "--phases", "examples,coverage,fuzzing", "--request-timeout", "15",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    if key:
        command += ["-H", f"Authorization: Bearer {key}"]
    # In a folder of its own: schemathesis keeps a cache of earlier crashes in its working
    # folder, which would make one run depend on the last.
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, cwd=tmp_path,
        timeout=SECONDS_PER_ROLE + 120, check=False,
    )  # fmt: skip
    summary = done.stdout[-4000:]
    assert done.returncode == 0, summary + done.stderr[-2000:]
    assert " passed" in summary and "generated" in summary, summary
