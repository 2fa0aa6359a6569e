"""Sandbox test helpers: small in-process sandboxes and a thin ServiceTitan client over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import Sandbox, SandboxConfig, TenantSpec

APP_KEY = "ak-test"
PROD = Environment.PRODUCTION
INTEG = Environment.INTEGRATION
CUSTOMERS = DataType.CUSTOMERS
INVOICES = DataType.INVOICES


def spec(
    tenant_id: int = 1,
    environment: Environment = PROD,
    *,
    customers: int = 120,
    invoices: int = 60,
    seed: int = 7,
) -> TenantSpec:
    """A tenant whose credentials are derived from its id and environment."""
    return TenantSpec(
        tenant_id=tenant_id,
        environment=environment,
        client_id=f"client-{environment.value}-{tenant_id}",
        client_secret=f"secret-{environment.value}-{tenant_id}",
        customers=customers,
        invoices=invoices,
        seed=seed,
    )


def make_config(**overrides: Any) -> SandboxConfig:
    """Two production tenants and one integration tenant, small pages, a generous rate limit."""
    values: dict[str, Any] = {
        "tenants": (spec(1), spec(2), spec(1, INTEG)),
        "app_keys": (APP_KEY,),
        "export_page_size": 50,
        "rate_limit_per_second": 100_000,
    }
    values.update(overrides)
    return SandboxConfig(**values)


@dataclass
class Reply:
    """Status, headers and body of one response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class StClient:
    """Just enough of a ServiceTitan client to exercise the sandbox."""

    def __init__(
        self, sandbox: Sandbox, session: aiohttp.ClientSession, tenant: TenantSpec
    ) -> None:
        self.sandbox = sandbox
        self.session = session
        self.tenant = tenant
        self._token: str | None = None

    async def fetch_token(
        self, client_id: str | None = None, client_secret: str | None = None
    ) -> Reply:
        url = self.sandbox.auth_url(self.tenant.environment) + "/connect/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id or self.tenant.client_id,
            "client_secret": client_secret or self.tenant.client_secret,
        }
        async with self.session.post(url, data=form) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def token(self) -> str:
        if self._token is None:
            reply = await self.fetch_token()
            assert reply.status == 200, reply.body
            self._token = reply.json()["access_token"]
        return self._token

    def path(self, data_type: DataType, export: bool, tenant_id: int | None = None) -> str:
        module = "crm" if data_type is CUSTOMERS else "accounting"
        tenant = tenant_id if tenant_id is not None else self.tenant.tenant_id
        middle = "export/" if export else ""
        return f"/{module}/v2/tenant/{tenant}/{middle}{data_type.value}"

    async def get(
        self,
        path: str,
        params: dict[str, str] | None = None,
        *,
        token: str | None = None,
        app_key: str | None = APP_KEY,
        bearer: bool = False,
        environment: Environment | None = None,
    ) -> Reply:
        headers = {}
        if app_key is not None:
            headers["ST-App-Key"] = app_key
        if token is None:
            token = await self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}" if bearer else token
        url = self.sandbox.api_url(environment or self.tenant.environment) + path
        async with self.session.get(url, params=params or {}, headers=headers) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def export_page(
        self, data_type: DataType, from_: str | None = None, **params: str
    ) -> Reply:
        if from_ is not None:
            params["from"] = from_
        return await self.get(self.path(data_type, True), params)

    async def export_all(
        self, data_type: DataType, from_: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Follow continuation tokens until hasMore is false."""
        records: list[dict[str, Any]] = []
        while True:
            reply = await self.export_page(data_type, from_)
            assert reply.status == 200, reply.body
            page = reply.json()
            records.extend(page["data"])
            from_ = page["continueFrom"]
            if not page["hasMore"]:
                return records, from_


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(make_config()) as sb:
        yield sb


@pytest.fixture
def client(sandbox: Sandbox, session: aiohttp.ClientSession) -> StClient:
    return StClient(sandbox, session, sandbox.config.tenants[0])
