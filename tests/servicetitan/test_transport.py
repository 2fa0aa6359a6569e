"""The transport under the client, over real HTTP: proxies from the environment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from stsync_daemon.enums import DataType
from stsync_daemon.sandbox import Sandbox, SandboxConfig
from stsync_daemon.servicetitan import ServiceTitanClient

from .test_against_sandbox import APP_KEY, TENANTS, access_for, client_config, digest, export_all

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "REQUEST_METHOD",
)
# Headers about one hop, not the request: a proxy does not pass them on.
_HOP_BY_HOP = {
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "accept-encoding",
}


class ForwardProxy:
    """A plain-HTTP forward proxy: records each absolute-form request and relays it upstream."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._upstream: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._upstream = aiohttp.ClientSession(trust_env=False)

    async def stop(self) -> None:
        if self._upstream is not None:
            await self._upstream.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _relay(self, request: web.Request) -> web.Response:
        target = request.raw_path
        if not target.startswith("http://"):
            return web.Response(status=400, text="a forward proxy expects absolute-form targets")
        self.requests.append((request.method, target))
        assert self._upstream is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        async with self._upstream.request(
            request.method,
            target,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            relayed = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() in ("content-type", "retry-after", "www-authenticate")
            }
            return web.Response(status=upstream.status, body=payload, headers=relayed)


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    forward = ForwardProxy()
    await forward.start()
    try:
        yield forward
    finally:
        await forward.stop()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(tenants=TENANTS, app_keys=(APP_KEY,), export_page_size=100)
    async with Sandbox(config) as sb:
        yield sb


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy setting of the machine running the tests leaks in."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_requests_go_through_the_proxy_named_by_http_proxy(
    sandbox: Sandbox, proxy: ForwardProxy, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    clean_proxy_env.setenv("HTTP_PROXY", proxy.url)
    spec = TENANTS[0]
    async with ServiceTitanClient(client_config(sandbox)) as st:
        records, _, pages = await export_all(st.tenant(access_for(spec)), DataType.CUSTOMERS)
    assert (
        digest(records)
        == sandbox.truth(spec.tenant_id, spec.environment, DataType.CUSTOMERS).digest
    )
    token_url = sandbox.auth_url(spec.environment) + "/connect/token"
    export_url = (
        sandbox.api_url(spec.environment) + f"/crm/v2/tenant/{spec.tenant_id}/export/customers"
    )
    assert proxy.requests[0] == ("POST", token_url)
    exports = [target for method, target in proxy.requests if method == "GET"]
    assert len(exports) == pages and all(t.startswith(export_url + "?") for t in exports)


async def test_no_proxy_bypasses_the_proxy(
    sandbox: Sandbox, proxy: ForwardProxy, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    clean_proxy_env.setenv("HTTP_PROXY", proxy.url)
    clean_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    spec = TENANTS[1]
    async with ServiceTitanClient(client_config(sandbox)) as st:
        records, _, _ = await export_all(st.tenant(access_for(spec)), DataType.INVOICES)
    assert len(records) == spec.invoices
    assert proxy.requests == []
