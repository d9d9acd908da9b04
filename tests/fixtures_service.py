"""The service on a real port as the portal uses it: its settings (keys, secrets),
its injected clock, and the API client."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from fixtures_mail import Inbox
from ports import free_port

from provisioner.api.serving import server_options
from provisioner.app import create_app
from provisioner.settings import ApiKey, Database, Listen, Secret, Secrets, Settings, Smtp
from provisioner.settings.load import load as load_settings

PORTAL_KEY = "portal-test-key"
ENGINEER_KEY = "engineer-test-key"
# Seals trunk passwords in the tests' databases (a Fernet key, made for the tests).
SECRETS_KEY = "dGVzdHMtb25seS1zZWNyZXRzLWtleS0zMi1ieXRlcyE="


@dataclass
class FakeClock:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 2, 9, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def make_settings(
    db_url: str, *, smtp_host: str, smtp_port: int, port: int, data: Path
) -> Settings:
    base = load_settings(env={})
    return replace(
        base,
        listen=Listen(port=port),
        public_base_url=f"http://127.0.0.1:{port}",
        database=Database(url=Secret(db_url)),
        data_dir=data,
        smtp=Smtp(
            host=smtp_host,
            port=smtp_port,
            sender="provisioner@operator.example",
            timeout_seconds=5,
        ),
        api_keys=(
            ApiKey(name="portal-backend", role="portal", key_sha256=sha256(PORTAL_KEY)),
            ApiKey(name="noc", role="engineer", key_sha256=sha256(ENGINEER_KEY)),
        ),
        secrets=Secrets(keys=(Secret(SECRETS_KEY),)),
    )


@pytest.fixture
def settings(db_url: str, inbox: Inbox, tmp_path: Path) -> Settings:
    return make_settings(
        db_url, smtp_host="127.0.0.1", smtp_port=inbox.port, port=free_port(), data=tmp_path
    )


class Api:
    """The test client, as the portal backend uses the API."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        key: str = PORTAL_KEY,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> ClientResponse:
        all_headers = {"Authorization": f"Bearer {key}"} if key else {}
        all_headers.update(headers or {})
        return await self.client.request(method, path, json=json, data=data, headers=all_headers)

    async def ok(self, method: str, path: str, json: Any = None, **kwargs: Any) -> Any:
        response = await self.call(method, path, json, **kwargs)
        body = await response.text()
        assert response.status < 300, f"{method} {path}: {response.status} {body}"
        return await response.json()

    async def problem(
        self, status: int, code: str, method: str, path: str, json: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        response = await self.call(method, path, json, **kwargs)
        text = await response.text()
        assert response.status == status, f"{method} {path}: {response.status} {text}"
        assert response.content_type == "application/problem+json", text
        problem: dict[str, Any] = await response.json(content_type=None)
        assert problem["code"] == code, problem
        assert problem["status"] == status
        assert "Traceback" not in text
        return problem


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings, clock=clock)
    server = TestServer(app, host="127.0.0.1", port=settings.listen.port)
    # TestServer takes the server's options at its start, not in its constructor.
    await server.start_server(**server_options(settings))
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def api(service: TestClient[Any, Any]) -> Api:
    return Api(service)
