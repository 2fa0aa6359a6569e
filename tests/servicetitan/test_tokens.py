"""Token provider: cached, refreshed before expiry, single-flight, refreshed once on 401, bad secrets."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from stsync_daemon.config import ServiceTitanConfig
from stsync_daemon.enums import DataType, Environment, ErrorCategory
from stsync_daemon.errors import ApiError, AppKeyError, InvalidCredentialsError
from stsync_daemon.servicetitan import CredentialAccess, ServiceTitanClient

from .conftest import (
    APP_KEY,
    CLIENT_SECRET,
    CUSTOMERS_LIST,
    TOKEN_URL,
    Endpoint,
    FakeClock,
    MockResponse,
    Recorder,
    TokenServer,
    make_client,
    ok,
    problem,
    serve,
)

LIST_OK = ok({"page": 1, "pageSize": 1, "hasMore": False, "totalCount": 5, "data": []})


async def test_token_is_fetched_once_and_sent_plainly_with_the_app_key(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    recorder: Recorder,
) -> None:
    api = serve(mocked, CUSTOMERS_LIST, Endpoint(LIST_OK))
    tenant = client.tenant(access)
    assert await tenant.count_changed(DataType.CUSTOMERS, None) == 5
    assert await client.tenant(access).count_changed(DataType.CUSTOMERS, None) == 5

    assert len(token_server.calls) == 1
    assert token_server.calls[0].data == {
        "grant_type": "client_credentials",
        "client_id": access.client_id,
        "client_secret": CLIENT_SECRET,
    }
    for call in api.calls:
        assert call.headers["Authorization"] == "tok-1"
        assert call.headers["ST-App-Key"] == APP_KEY
    assert recorder.tokens == [(Environment.INTEGRATION, "ok")]
    assert ("token" in {endpoint for _, endpoint, _ in recorder.requests}) is True


async def test_token_is_refreshed_margin_seconds_before_expiry(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
) -> None:
    api = serve(mocked, CUSTOMERS_LIST, Endpoint(LIST_OK))
    tenant = client.tenant(access)
    await tenant.count_changed(DataType.CUSTOMERS, None)
    clock.now += 900 - 60 - 1  # still inside the margin-free life
    await tenant.count_changed(DataType.CUSTOMERS, None)
    assert len(token_server.calls) == 1
    clock.now += 2  # within 60 s of expiry: refresh before using it
    await tenant.count_changed(DataType.CUSTOMERS, None)
    assert len(token_server.calls) == 2
    assert [c.headers["Authorization"] for c in api.calls] == ["tok-1", "tok-1", "tok-2"]


async def test_short_lived_tokens_keep_half_their_life(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    clock: FakeClock,
) -> None:
    server = TokenServer(expires_in=10)
    mocked.post(TOKEN_URL, callback=server.handle, repeat=True)
    serve(mocked, CUSTOMERS_LIST, Endpoint(LIST_OK))
    tenant = client.tenant(access)
    await tenant.count_changed(DataType.CUSTOMERS, None)
    clock.now += 4
    await tenant.count_changed(DataType.CUSTOMERS, None)
    assert server.issued == 1
    clock.now += 2
    await tenant.count_changed(DataType.CUSTOMERS, None)
    assert server.issued == 2


async def test_hundred_concurrent_callers_cause_one_token_request(
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
) -> None:
    token_server.delay = 0.01  # the fetch is in flight while the others arrive
    serve(mocked, CUSTOMERS_LIST, Endpoint(LIST_OK))
    config = ServiceTitanConfig(requests_per_second=1000)
    async with make_client(config, clock, recorder) as st:
        counts = await asyncio.gather(
            *(st.tenant(access).count_changed(DataType.CUSTOMERS, None) for _ in range(100))
        )
    assert counts == [5] * 100
    assert len(token_server.calls) == 1


async def test_a_401_refreshes_the_token_once_and_retries(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    recorder: Recorder,
) -> None:
    api = serve(mocked, CUSTOMERS_LIST, Endpoint(LIST_OK)).then(problem(401, "Unauthorized"))
    assert await client.tenant(access).count_changed(DataType.CUSTOMERS, None) == 5
    assert [c.headers["Authorization"] for c in api.calls] == ["tok-1", "tok-2"]
    assert recorder.retries == [(Environment.INTEGRATION, "401")]


async def test_concurrent_401s_share_one_refresh(
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
) -> None:
    token_server.delay = 0.01
    seen: list[str] = []

    async def revoke_first_token(url: URL, **kwargs: Any) -> CallbackResult:
        token = kwargs["headers"]["Authorization"]
        seen.append(token)
        await asyncio.sleep(0.005)
        answer = problem(401, "Unauthorized") if token == "tok-1" else LIST_OK
        return CallbackResult(response_class=MockResponse, **answer)

    mocked.get(CUSTOMERS_LIST, callback=revoke_first_token, repeat=True)
    async with make_client(ServiceTitanConfig(requests_per_second=1000), clock, recorder) as st:
        tenant = st.tenant(access)
        counts = await asyncio.gather(
            *(tenant.count_changed(DataType.CUSTOMERS, None) for _ in range(10))
        )
    assert counts == [5] * 10
    # All ten were rejected with tok-1; they shared one refresh instead of fetching ten tokens.
    assert token_server.issued == 2
    assert seen.count("tok-1") == 10 and seen.count("tok-2") == 10


async def test_a_second_401_after_refresh_is_invalid_credentials(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    """Once the app key has worked (here for this very tenant), a 401 is the tenant's doing."""
    serve(mocked, CUSTOMERS_LIST, Endpoint(problem(401, "Unauthorized")).then(LIST_OK))
    tenant = client.tenant(access)
    assert await tenant.count_changed(DataType.CUSTOMERS, None) == 5
    with pytest.raises(InvalidCredentialsError) as info:
        await tenant.count_changed(DataType.CUSTOMERS, None)
    assert len(token_server.calls) == 2
    assert info.value.category is ErrorCategory.AUTH
    assert not info.value.transient
    assert "stsyncctl credentials update" in str(info.value)


async def test_a_401_from_an_app_key_that_never_worked_is_the_daemons_configuration(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    serve(mocked, CUSTOMERS_LIST, Endpoint(problem(401, "Unauthorized")))
    with pytest.raises(AppKeyError) as info:
        await client.tenant(access).count_changed(DataType.CUSTOMERS, None)
    assert info.value.category is ErrorCategory.CONFIGURATION
    assert "[servicetitan] app_key" in str(info.value) and APP_KEY not in str(info.value)


async def test_a_401_naming_the_app_key_blames_the_configuration_even_after_successes(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    named = problem(401, "Unauthorized", body={"errors": {"ST-App-Key": ["not a known key"]}})
    serve(mocked, CUSTOMERS_LIST, Endpoint(named).then(LIST_OK))
    tenant = client.tenant(access)
    await tenant.count_changed(DataType.CUSTOMERS, None)
    with pytest.raises(AppKeyError):
        await tenant.count_changed(DataType.CUSTOMERS, None)
    own = dataclasses.replace(access, own_app_key=True)  # the credential's own key: its problem
    with pytest.raises(InvalidCredentialsError, match="credentials update --app-key-file"):
        await client.tenant(own).count_changed(DataType.CUSTOMERS, None)


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 400, "payload": {"error": "invalid_client"}},
        {"status": 400, "payload": {"error": "unauthorized_client"}},
        {"status": 401, "payload": {"error": "invalid_client"}},
        {"status": 401, "body": ""},
        {"status": 400, "body": "<html>bad</html>"},
    ],
)
async def test_a_rejected_secret_is_invalid_credentials_with_an_actionable_message(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    recorder: Recorder,
    answer: dict[str, object],
) -> None:
    server = Endpoint(answer)
    mocked.post(TOKEN_URL, callback=server.handle, repeat=True)
    api = serve(mocked, CUSTOMERS_LIST, Endpoint(LIST_OK))
    with pytest.raises(InvalidCredentialsError) as info:
        await client.tenant(access).count_changed(DataType.CUSTOMERS, None)
    message = str(info.value)
    assert "client id 'cid-0123…'" in message
    assert "tenant 123" in message and "integration" in message
    assert "stsyncctl credentials update" in message
    assert info.value.category is ErrorCategory.AUTH and not info.value.transient
    assert len(server.calls) == 1  # permanent: no retry
    assert api.calls == []
    assert recorder.tokens == [(Environment.INTEGRATION, "error")]


async def test_concurrent_callers_with_a_bad_secret_share_one_rejection(
    client: ServiceTitanClient, access: CredentialAccess, mocked: aioresponses
) -> None:
    server = Endpoint({"status": 400, "payload": {"error": "invalid_client"}})
    server.delay = 0.01
    mocked.post(TOKEN_URL, callback=server.handle, repeat=True)
    results = await asyncio.gather(
        *(client.tenant(access).check() for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, InvalidCredentialsError) for r in results)
    assert len(server.calls) == 1


async def test_token_endpoint_outage_is_retried(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    recorder: Recorder,
) -> None:
    token_server.then(problem(503, "Service Unavailable"), {"status": 200, "body": "{not json"})
    serve(mocked, CUSTOMERS_LIST, Endpoint(LIST_OK))
    assert await client.tenant(access).count_changed(DataType.CUSTOMERS, None) == 5
    assert len(token_server.calls) == 3
    assert [r for _, r in recorder.retries] == ["5xx", "network"]
    assert recorder.tokens == [(Environment.INTEGRATION, "ok")]


async def test_an_unexpected_oauth_error_is_a_permanent_api_error(
    client: ServiceTitanClient, access: CredentialAccess, mocked: aioresponses
) -> None:
    server = Endpoint({"status": 400, "payload": {"error": "unsupported_grant_type"}})
    mocked.post(TOKEN_URL, callback=server.handle, repeat=True)
    with pytest.raises(ApiError) as info:
        await client.tenant(access).check()
    assert info.value.status == 400 and not info.value.transient


async def test_check_fetches_a_fresh_token_then_one_customer(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    api = serve(mocked, CUSTOMERS_LIST, Endpoint(LIST_OK))
    tenant = client.tenant(access)
    await tenant.check()
    await tenant.check()
    assert len(token_server.calls) == 2  # a check really tests the secret, not the cache
    assert api.calls[-1].params == {"pageSize": "1", "active": "Any"}
    assert api.calls[-1].headers["Authorization"] == "tok-2"
