"""The transport under the client, over real HTTP: proxies from the environment, the body size cap."""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from stsync_daemon.config import (
    EnvironmentsConfig,
    EnvironmentURLs,
    ServiceTitanConfig,
    load_settings,
)
from stsync_daemon.enums import DataType, Environment, ErrorCategory
from stsync_daemon.errors import ApiError, ConfigError
from stsync_daemon.sandbox import EndpointKind, Sandbox, SandboxConfig
from stsync_daemon.servicetitan import CredentialAccess, ServiceTitanClient

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
        self.authorizations: list[str | None] = []  # Proxy-Authorization of each request
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
        self.authorizations.append(request.headers.get("Proxy-Authorization"))
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


# -- the response size cap --------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MIB = 1024 * 1024


class TinyApi:
    """A token endpoint and one customers export answered by a test's handler, for bodies a real
    ServiceTitan might send but the sandbox never does (chunked, compressed, endless)."""

    def __init__(self, export: Handler) -> None:
        self.export = export
        self.url = ""
        self.exports = 0
        self.sent = 0
        self.finished_writing = False
        self._runner: web.AppRunner | None = None

    async def _token(self, request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "expires_in": 900})

    async def _export(self, request: web.Request) -> web.StreamResponse:
        self.exports += 1
        return await self.export(request)

    async def __aenter__(self) -> TinyApi:
        app = web.Application()
        app.router.add_post("/connect/token", self._token)
        app.router.add_get("/crm/v2/tenant/{tenant}/export/customers", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def config(self, **overrides: object) -> ServiceTitanConfig:
        urls = EnvironmentURLs(auth_url=self.url, api_url=self.url)
        return ServiceTitanConfig(
            environments=EnvironmentsConfig(integration=urls, production=urls),
            max_attempts=3,
            **overrides,  # type: ignore[arg-type]
        )


TINY_ACCESS = CredentialAccess(
    credential_id="cred-tiny",
    environment=Environment.INTEGRATION,
    tenant_id=7,
    client_id="cid-tiny",
    client_secret=SecretStr("tiny-secret"),
    app_key=SecretStr("ak-tiny"),
)


async def test_credentials_in_the_proxy_url_authenticate_to_the_proxy(
    sandbox: Sandbox, proxy: ForwardProxy, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    clean_proxy_env.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://ops:s%40cret@"))
    async with ServiceTitanClient(client_config(sandbox)) as st:
        records, _, _ = await export_all(st.tenant(access_for(TENANTS[0])), DataType.CUSTOMERS)
    assert len(records) == TENANTS[0].customers
    expected = "Basic " + base64.b64encode(b"ops:s@cret").decode()
    assert proxy.authorizations and set(proxy.authorizations) == {expected}


async def test_a_netrc_default_entry_reaches_neither_servicetitan_nor_the_proxy(
    sandbox: Sandbox,
    proxy: ForwardProxy,
    clean_proxy_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A `default` entry in the service user's ~/.netrc once went with every token request."""
    netrc = tmp_path / "netrc"
    netrc.write_text("default login someone password hunter2\n")
    netrc.chmod(0o600)
    clean_proxy_env.setenv("NETRC", str(netrc))
    clean_proxy_env.setenv("HTTP_PROXY", proxy.url)
    async with ServiceTitanClient(client_config(sandbox)) as st:
        records, _, _ = await export_all(st.tenant(access_for(TENANTS[0])), DataType.CUSTOMERS)
    assert len(records) == TENANTS[0].customers
    assert set(proxy.authorizations) == {None}


async def test_the_proxy_is_looked_up_once_per_host_not_in_a_thread_per_request(
    sandbox: Sandbox, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    threads: list[object] = []
    real = asyncio.to_thread

    async def counting(func: Callable[..., object], /, *args: object, **kwargs: object) -> object:
        threads.append(func)
        return await real(func, *args, **kwargs)

    clean_proxy_env.setattr(asyncio, "to_thread", counting)
    async with ServiceTitanClient(client_config(sandbox)) as st:
        _, _, pages = await export_all(st.tenant(access_for(TENANTS[0])), DataType.CUSTOMERS)
    assert pages > 3 and threads == []


async def test_an_https_proxy_url_is_ignored_with_a_warning(
    sandbox: Sandbox, clean_proxy_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_proxy_env.setenv("HTTP_PROXY", "https://user:topsecret@127.0.0.1:9")
    async with ServiceTitanClient(client_config(sandbox)) as st:
        records, _, _ = await export_all(st.tenant(access_for(TENANTS[0])), DataType.CUSTOMERS)
    assert len(records) == TENANTS[0].customers
    warnings = [r.getMessage() for r in caplog.records if "proxy" in r.getMessage()]
    assert warnings and "https" in warnings[0] and "topsecret" not in " ".join(warnings)


def page_bytes(records: int, *, padding: int = 0) -> bytes:
    data = [{"id": i, "modifiedOn": "2024-01-01T00:00:00Z", "active": True} for i in range(records)]
    body = orjson.dumps({"hasMore": False, "continueFrom": "end", "data": data})
    return body[:-2] + b" " * padding + body[-2:]  # whitespace inside the data array


def assert_too_large(exc: ApiError, limit: int) -> None:
    message = str(exc)
    assert exc.category is ErrorCategory.API and exc.transient is False and exc.status == 200
    assert "the customers export" in message and "max_response_bytes" in message
    assert f"{limit} bytes" in message
    assert "tiny-secret" not in message and "ak-tiny" not in message


async def test_a_declared_length_over_the_cap_fails_at_once_without_retrying(
    sandbox: Sandbox,
) -> None:
    spec = TENANTS[0]
    sandbox.reset_counters()
    async with ServiceTitanClient(client_config(sandbox, max_response_bytes=4096)) as st:
        tenant = st.tenant(access_for(spec))
        with pytest.raises(ApiError) as info:
            await tenant.fetch_export_page(DataType.CUSTOMERS, None)
        message = str(info.value)
        assert info.value.transient is False and info.value.status == 200
        assert "the customers export" in message and "[servicetitan] max_response_bytes" in message
        assert "4096 bytes" in message and access_for(spec).describe() in message
        assert spec.client_secret not in message and APP_KEY not in message
        # Small answers (a token, a count) still pass under a small cap.
        assert await tenant.count_changed(DataType.CUSTOMERS, None) == spec.customers
    counters = sandbox.counters(spec.tenant_id, spec.environment)
    assert counters.total(kind=EndpointKind.CUSTOMERS_EXPORT) == 1


async def test_an_endless_chunked_body_is_cut_off_at_the_cap() -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"hasMore":false,"continueFrom":"x","data":[')
        chunk = b" " * 65536
        try:
            while True:
                await response.write(chunk)
                api.sent += len(chunk)
        except (ConnectionError, RuntimeError):
            return response  # the client hung up, as it should
        finally:
            api.finished_writing = True

    async with TinyApi(endless) as api:
        async with ServiceTitanClient(api.config(max_response_bytes=MIB)) as st:
            with pytest.raises(ApiError) as info:
                await asyncio.wait_for(
                    st.tenant(TINY_ACCESS).fetch_export_page(DataType.CUSTOMERS, None), 20
                )
        assert_too_large(info.value, MIB)
        assert api.exports == 1
        for _ in range(100):
            if api.finished_writing:
                break
            await asyncio.sleep(0.05)
        assert api.finished_writing and api.sent < 64 * MIB


async def test_a_compressed_body_is_capped_by_its_decoded_size() -> None:
    body = page_bytes(3, padding=3 * MIB)
    packed = gzip.compress(body)
    assert len(packed) < MIB < len(body)

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(
            body=packed, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    async with TinyApi(bomb) as api:
        async with ServiceTitanClient(api.config(max_response_bytes=MIB)) as st:
            with pytest.raises(ApiError) as info:
                await st.tenant(TINY_ACCESS).fetch_export_page(DataType.CUSTOMERS, None)
        assert_too_large(info.value, MIB)
        async with ServiceTitanClient(api.config(max_response_bytes=4 * MIB)) as st:
            page = await st.tenant(TINY_ACCESS).fetch_export_page(DataType.CUSTOMERS, None)
        assert [r["id"] for r in page.records] == [0, 1, 2] and page.nbytes == len(body)


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_of_exactly_the_cap_is_read_whole(chunked: bool) -> None:
    body = page_bytes(50)
    body = body[:-2] + b" " * (4096 - len(body)) + body[-2:]
    assert len(body) == 4096

    async def exact(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 1000):
            await response.write(body[start : start + 1000])
        await response.write_eof()
        return response

    async with TinyApi(exact) as api:
        async with ServiceTitanClient(api.config(max_response_bytes=4096)) as st:
            page = await st.tenant(TINY_ACCESS).fetch_export_page(DataType.CUSTOMERS, None)
        assert len(page.records) == 50 and page.nbytes == 4096
        async with ServiceTitanClient(api.config(max_response_bytes=4095)) as st:
            with pytest.raises(ApiError) as info:
                await st.tenant(TINY_ACCESS).fetch_export_page(DataType.CUSTOMERS, None)
        assert_too_large(info.value, 4095)


def test_the_cap_defaults_to_256_mib_and_cannot_go_below_1024(tmp_path: Path) -> None:
    assert ServiceTitanConfig().max_response_bytes == 268435456
    assert ServiceTitanConfig(max_response_bytes=1024).max_response_bytes == 1024
    path = tmp_path / "stsync.toml"
    path.write_text("[servicetitan]\nmax_response_bytes = 1023\n")
    with pytest.raises(ConfigError, match=r"servicetitan\.max_response_bytes"):
        load_settings(path)
