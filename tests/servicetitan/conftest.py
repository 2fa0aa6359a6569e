"""Fixtures for the ServiceTitan client: a fake clock, scripted endpoints on aioresponses, a recorder."""

from __future__ import annotations

import asyncio
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import ClientResponse
from aioresponses import CallbackResult, aioresponses
from pydantic import SecretStr
from yarl import URL

from stsync_daemon.config import ServiceTitanConfig
from stsync_daemon.enums import Environment
from stsync_daemon.servicetitan import CredentialAccess, ServiceTitanClient

AUTH = "https://auth-integration.servicetitan.io"
API = "https://api-integration.servicetitan.io"
TOKEN_URL = AUTH + "/connect/token"
TENANT = 123
CUSTOMERS_EXPORT = re.compile(rf"^{re.escape(API)}/crm/v2/tenant/{TENANT}/export/customers(\?.*)?$")
INVOICES_EXPORT = re.compile(
    rf"^{re.escape(API)}/accounting/v2/tenant/{TENANT}/export/invoices(\?.*)?$"
)
CUSTOMERS_LIST = re.compile(rf"^{re.escape(API)}/crm/v2/tenant/{TENANT}/customers(\?.*)?$")
INVOICES_LIST = re.compile(rf"^{re.escape(API)}/accounting/v2/tenant/{TENANT}/invoices(\?.*)?$")

CLIENT_SECRET = "S3cr3t-client-secret-7f1e"
APP_KEY = "ak1.app-key-value-9c2d"


class MockResponse(ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required `stream_writer`; supply a stand-in."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class FakeClock:
    """Monotonic seconds that only move when someone sleeps: backoff tests run instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Recorder:
    """A ClientObserver that keeps every call."""

    requests: list[tuple[Environment, str, int | None]] = field(default_factory=list)
    waits: list[tuple[Environment, float, str]] = field(default_factory=list)
    tokens: list[tuple[Environment, str]] = field(default_factory=list)
    retries: list[tuple[Environment, str]] = field(default_factory=list)

    def request_finished(
        self, environment: Environment, endpoint: str, status: int | None, seconds: float
    ) -> None:
        self.requests.append((environment, endpoint, status))

    def rate_limit_waited(self, environment: Environment, seconds: float, reason: str) -> None:
        self.waits.append((environment, seconds, reason))

    def token_refreshed(self, environment: Environment, outcome: str) -> None:
        self.tokens.append((environment, outcome))

    def retried(self, environment: Environment, reason: str) -> None:
        self.retries.append((environment, reason))


@dataclass
class Call:
    """One request an endpoint received."""

    url: URL
    headers: dict[str, str]
    data: dict[str, str] | None

    @property
    def params(self) -> dict[str, str]:
        return dict(self.url.query)


class Endpoint:
    """A scripted endpoint: answers queued responses in order, then the default; records calls.

    A queued item is a dict of `CallbackResult` arguments or an exception to raise.
    """

    def __init__(self, default: dict[str, Any] | BaseException | None = None) -> None:
        self.calls: list[Call] = []
        self.queue: deque[dict[str, Any] | BaseException] = deque()
        self.default = default
        self.delay = 0.0

    def then(self, *items: dict[str, Any] | BaseException) -> Endpoint:
        self.queue.extend(items)
        return self

    async def handle(self, url: URL, **kwargs: Any) -> CallbackResult:
        headers = {k: v for k, v in (kwargs.get("headers") or {}).items()}
        self.calls.append(Call(url=url, headers=headers, data=kwargs.get("data")))
        if self.delay:
            await asyncio.sleep(self.delay)
        item = self.queue.popleft() if self.queue else self.default
        if item is None:
            raise AssertionError(f"unexpected request {url}")
        if isinstance(item, BaseException):
            raise item
        return CallbackResult(response_class=MockResponse, **item)


def ok(payload: Any, **extra: Any) -> dict[str, Any]:
    return {"status": 200, "payload": payload, **extra}


def problem(status: int, title: str, trace: str = "trace-abc", **extra: Any) -> dict[str, Any]:
    body = {"type": "x", "title": title, "status": status, "traceId": trace, "errors": {}}
    body.update(extra.pop("body", {}))
    return {"status": status, "payload": body, **extra}


def export_body(ids: list[int], *, has_more: bool, cont: str | None) -> dict[str, Any]:
    return {
        "hasMore": has_more,
        "continueFrom": cont,
        "data": [{"id": i, "modifiedOn": "2024-01-01T00:00:00Z", "active": True} for i in ids],
    }


class TokenServer(Endpoint):
    """Issues tok-1, tok-2, … unless something else is queued."""

    def __init__(self, expires_in: float = 900) -> None:
        super().__init__()
        self.expires_in = expires_in
        self.issued = 0

    async def handle(self, url: URL, **kwargs: Any) -> CallbackResult:
        if self.queue:
            return await super().handle(url, **kwargs)
        self.issued += 1
        self.default = ok({"access_token": f"tok-{self.issued}", "expires_in": self.expires_in})
        return await super().handle(url, **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def config() -> ServiceTitanConfig:
    return ServiceTitanConfig(app_key=SecretStr(APP_KEY), max_attempts=5, max_retry_seconds=300)


@pytest.fixture
def access() -> CredentialAccess:
    return CredentialAccess(
        credential_id="cred-1",
        environment=Environment.INTEGRATION,
        tenant_id=TENANT,
        client_id="cid-0123456789abcdef",
        client_secret=SecretStr(CLIENT_SECRET),
        app_key=SecretStr(APP_KEY),
    )


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
def token_server(mocked: aioresponses) -> TokenServer:
    server = TokenServer()
    mocked.post(TOKEN_URL, callback=server.handle, repeat=True)
    return server


def serve(mocked: aioresponses, pattern: re.Pattern[str], endpoint: Endpoint) -> Endpoint:
    """Route every GET matching `pattern` to `endpoint`."""
    mocked.get(pattern, callback=endpoint.handle, repeat=True)
    return endpoint


def make_client(
    config: ServiceTitanConfig, clock: FakeClock, recorder: Recorder
) -> ServiceTitanClient:
    return ServiceTitanClient(
        config, observer=recorder, clock=clock, sleep=clock.sleep, rng=random.Random(7)
    )


@pytest.fixture
async def client(
    config: ServiceTitanConfig, clock: FakeClock, recorder: Recorder
) -> AsyncIterator[ServiceTitanClient]:
    async with make_client(config, clock, recorder) as st:
        yield st
