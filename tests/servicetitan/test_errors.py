"""Error mapping: 403, 400, 404, invalid continuation tokens, bad envelopes; and no secret anywhere."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from aioresponses import aioresponses

from stsync_daemon.config import ServiceTitanConfig
from stsync_daemon.enums import DataType, ErrorCategory
from stsync_daemon.errors import (
    ApiError,
    InvalidCredentialsError,
    StsyncError,
    ValidationFailure,
)
from stsync_daemon.servicetitan import (
    CredentialAccess,
    ExportTokenInvalidError,
    ServiceTitanClient,
)

from .conftest import (
    APP_KEY,
    CLIENT_SECRET,
    CUSTOMERS_EXPORT,
    CUSTOMERS_LIST,
    INVOICES_EXPORT,
    TOKEN_URL,
    Endpoint,
    FakeClock,
    Recorder,
    TokenServer,
    make_client,
    ok,
    problem,
    serve,
)


async def test_403_is_invalid_credentials_naming_the_tenant(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    api = serve(
        mocked,
        CUSTOMERS_EXPORT,
        Endpoint(problem(403, "Provided authentication is insufficient to grant access", "t-403")),
    )
    with pytest.raises(InvalidCredentialsError) as info:
        await client.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    message = str(info.value)
    assert "tenant 123" in message and "integration" in message
    assert "t-403" in message and "insufficient" in message
    assert "connect the app" in message
    assert info.value.category is ErrorCategory.AUTH and not info.value.transient
    assert len(api.calls) == 1


@pytest.mark.parametrize(
    ("status", "title", "hint"),
    [
        (400, "One or more validation errors occurred.", "bug in stsync"),
        (404, "Tenant not found", "right tenant id"),
        (422, "Unprocessable", "report it"),
    ],
)
async def test_other_4xx_are_permanent_api_errors_with_trace_id(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    status: int,
    title: str,
    hint: str,
) -> None:
    body = {"errors": {"pageSize": ["must be at most 5000"]}} if status == 400 else {}
    api = serve(mocked, CUSTOMERS_LIST, Endpoint(problem(status, title, "trace-42", body=body)))
    with pytest.raises(ApiError) as info:
        await client.tenant(access).count_changed(DataType.CUSTOMERS, None)
    exc = info.value
    assert type(exc) is ApiError
    assert exc.status == status and exc.trace_id == "trace-42" and exc.transient is False
    assert exc.category is ErrorCategory.API
    message = str(exc)
    assert str(status) in message and title in message and "traceId trace-42" in message
    assert hint in message
    if status == 400:
        assert "pageSize: must be at most 5000" in message
    assert len(api.calls) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"title": "The continuation token is invalid or expired."},
        {"title": "Invalid 'from' value"},
        {"title": "One or more validation errors occurred.", "errors": {"from": ["bad token"]}},
    ],
)
async def test_a_refused_continuation_token_has_its_own_error(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    body: dict[str, object],
) -> None:
    answer = problem(400, "x", "t-tok")
    answer["payload"].update(body)
    serve(mocked, INVOICES_EXPORT, Endpoint(answer))
    with pytest.raises(ExportTokenInvalidError) as info:
        await client.tenant(access).fetch_export_page(DataType.INVOICES, "stale-token")
    assert isinstance(info.value, ApiError)
    assert info.value.status == 400 and info.value.trace_id == "t-tok"
    assert not info.value.transient
    assert "last committed" in str(info.value)


async def test_an_unrelated_export_400_is_a_plain_api_error(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    serve(mocked, INVOICES_EXPORT, Endpoint(problem(400, "includeRecentChanges must be bool")))
    with pytest.raises(ApiError) as info:
        await client.tenant(access).fetch_export_page(DataType.INVOICES, None)
    assert type(info.value) is ApiError


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2],
        {"hasMore": False},
        {"hasMore": "no", "data": []},
        {"hasMore": True, "continueFrom": None, "data": []},
        {"hasMore": False, "continueFrom": 5, "data": []},
    ],
)
async def test_an_unexpected_envelope_is_a_validation_failure(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    payload: object,
) -> None:
    serve(mocked, CUSTOMERS_EXPORT, Endpoint(ok(payload)))
    with pytest.raises(ValidationFailure) as info:
        await client.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    assert "expected shape" in str(info.value)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in out:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


SECRETS = (CLIENT_SECRET, APP_KEY, "tok-1", "tok-2")


def _assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {text!r}"


async def test_no_secret_or_token_in_errors_reprs_or_logs(
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = ServiceTitanConfig(max_attempts=2)
    errors: list[BaseException] = []
    scenarios = [
        problem(401, "Unauthorized"),
        problem(403, "Forbidden"),
        problem(400, "Bad"),
        problem(404, "Missing"),
        problem(429, "Slow down", headers={"Retry-After": "1"}),
        problem(500, "Oops"),
        problem(409, "Maintenance"),
        aiohttp.ClientConnectionError("reset"),
        {"status": 200, "body": "{"},
    ]
    async with make_client(config, clock, recorder) as st:
        tenant = st.tenant(access)
        for answer in scenarios:
            mocked.clear()
            mocked.post(TOKEN_URL, callback=token_server.handle, repeat=True)
            serve(mocked, CUSTOMERS_EXPORT, Endpoint(answer))  # type: ignore[arg-type]
            with pytest.raises(StsyncError) as info:
                await tenant.fetch_export_page(DataType.CUSTOMERS, "cursor")
            errors.append(info.value)
        mocked.clear()
        bad = Endpoint({"status": 400, "payload": {"error": "invalid_client"}})
        mocked.post(TOKEN_URL, callback=bad.handle, repeat=True)
        with pytest.raises(InvalidCredentialsError) as info:
            await tenant.check()
        errors.append(info.value)
        _assert_clean(repr(st) + repr(tenant) + repr(access) + str(access))
        _assert_clean(repr(tenant._tokens) + repr(tenant._tokens.cached))
    assert len(errors) == len(scenarios) + 1
    for error in errors:
        for link in _chain(error):
            _assert_clean(str(link))
            _assert_clean(repr(link))
            _assert_clean(repr(link.args))
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    _assert_clean(logged)
    assert "servicetitan.retry" in caplog.text
