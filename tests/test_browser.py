"""The confirm page in a real browser (Debian's chromium, headless)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from fixtures_db import snapshot
from fixtures_mail import Inbox
from fixtures_service import Api
from helpers import BLOCK, request_assignment, scene
from playwright.async_api import BrowserContext, async_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = pytest.mark.browser


@pytest.fixture
async def browser() -> AsyncIterator[BrowserContext]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-system-deps (make test does)")
    profile = tempfile.mkdtemp(prefix="prov-chromium-")
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            yield context
        finally:
            await context.close()
            shutil.rmtree(profile, ignore_errors=True)


async def test_loading_shows_and_clicking_confirms(
    api: Api, inbox: Inbox, db: psycopg.Connection[Any], browser: BrowserContext
) -> None:
    await scene(api)
    _, owner_link, target_link = await request_assignment(api, inbox)
    page = await browser.new_page()

    before = snapshot(db)
    response = await page.goto(owner_link)
    assert response is not None and response.status == 200
    assert await page.text_content("#numbers") == "+49 89 123456 0-99"
    assert "K200300" in (await page.text_content("#owner") or "")
    assert "K100200" in (await page.text_content("#target") or "")
    await page.reload()
    assert snapshot(db) == before  # a browser (or a mail scanner) loading the page confirms nothing

    await page.click("#confirm")
    await page.wait_for_selector("#message")
    assert await page.get_attribute("#state", "data-state") == "pending"
    assert await page.text_content("#owner-confirmed") == "yes"
    assert await page.query_selector("#confirm") is None  # nothing left to click
    state = await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment")
    assert (state["owner_confirmed"], state["target_confirmed"]) == (True, False)

    # The target's admin reads German.
    await page.goto(target_link)
    assert await page.text_content("#confirm") == "Zuordnung bestätigen"
    await page.click("#confirm")
    await page.wait_for_selector("#message")
    assert await page.get_attribute("#state", "data-state") == "active"
    assert (await api.ok("GET", f"/v1/blocks/{BLOCK}/assignment"))["state"] == "active"
