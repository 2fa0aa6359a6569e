"""Retry policy: 429 with Retry-After, 5xx, 409, network and malformed bodies; bounded in count and time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
from aioresponses import aioresponses

from stsync_daemon.config import ServiceTitanConfig
from stsync_daemon.enums import DataType, Environment, ErrorCategory
from stsync_daemon.errors import ApiError, NetworkError, RateLimitError
from stsync_daemon.servicetitan import CredentialAccess, ServiceTitanClient
from stsync_daemon.servicetitan.retry import RetryPolicy, parse_retry_after

from .conftest import (
    CUSTOMERS_EXPORT,
    Endpoint,
    FakeClock,
    Recorder,
    TokenServer,
    export_body,
    make_client,
    ok,
    problem,
    serve,
)

PAGE = ok(export_body([1, 2], has_more=False, cont="c1"))


async def test_429_waits_at_least_retry_after(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
) -> None:
    api = serve(mocked, CUSTOMERS_EXPORT, Endpoint(PAGE)).then(
        problem(429, "Too Many Requests", headers={"Retry-After": "7"})
    )
    page = await client.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    assert [r["id"] for r in page.records] == [1, 2]
    assert len(api.calls) == 2
    assert 7 <= clock.sleeps[0] <= 7.8
    assert recorder.retries == [(Environment.INTEGRATION, "429")]
    assert [(reason, round(s)) for _, s, reason in recorder.waits] == [("429", 7)]
    assert (Environment.INTEGRATION, "export_customers", 429) in recorder.requests


async def test_429_without_header_reads_seconds_from_the_title(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
) -> None:
    serve(mocked, CUSTOMERS_EXPORT, Endpoint(PAGE)).then(
        problem(429, "Rate limit is exceeded. Try again in 12 seconds.")
    )
    await client.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    assert 12 <= clock.sleeps[0] <= 13.3


async def test_429_delays_the_other_requests_of_the_tenant(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
) -> None:
    serve(mocked, CUSTOMERS_EXPORT, Endpoint(PAGE)).then(
        problem(429, "Too Many Requests", headers={"Retry-After": "5"})
    )
    tenant = client.tenant(access)
    await tenant.fetch_export_page(DataType.CUSTOMERS, None)
    limiter = tenant._limiter
    clock.now -= 4  # as if another request arrived during the pause
    waited = await limiter.acquire()
    assert waited >= 3.9


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (problem(500, "Internal Server Error"), "5xx"),
        (problem(502, "Bad Gateway"), "5xx"),
        (problem(503, "Service Unavailable"), "5xx"),
        (
            problem(409, "The service is suspended for maintenance. Please try again later."),
            "409",
        ),
        (aiohttp.ClientConnectionError("Connection reset by peer"), "network"),
        (aiohttp.ServerDisconnectedError(), "network"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), "network"),
        (TimeoutError(), "network"),
        (ConnectionResetError(104, "Connection reset by peer"), "network"),
        ({"status": 200, "body": '{"hasMore": true, "data": [{"id": 1'}, "network"),
        ({"status": 200, "body": "<html>proxy</html>"}, "network"),
    ],
)
async def test_transient_failures_are_retried_with_backoff(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
    answer: object,
    reason: str,
) -> None:
    api = serve(mocked, CUSTOMERS_EXPORT, Endpoint(PAGE)).then(answer, answer)  # type: ignore[arg-type]
    page = await client.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    assert page.has_more is False
    assert len(api.calls) == 3
    assert [r for _, r in recorder.retries] == [reason, reason]
    assert len(clock.sleeps) == 2
    assert 0.5 <= clock.sleeps[0] <= 1.0 and 1.0 <= clock.sleeps[1] <= 2.0  # doubling, jittered
    statuses = [status for _, endpoint, status in recorder.requests if endpoint != "token"]
    expected = None if isinstance(answer, BaseException) else answer["status"]  # type: ignore[index]
    assert statuses == [expected, expected, 200]


@pytest.mark.parametrize(
    ("answer", "reason", "seconds"),
    [
        (problem(503, "Service Unavailable", headers={"Retry-After": "20"}), "5xx", 20),
        (problem(500, "Internal Server Error", headers={"Retry-After": "9"}), "5xx", 9),
        (
            problem(
                409,
                "The service is suspended for maintenance. Please try again later.",
                headers={"Retry-After": "45"},
            ),
            "409",
            45,
        ),
    ],
)
async def test_retry_after_on_5xx_and_409_is_honoured(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
    answer: dict[str, object],
    reason: str,
    seconds: float,
) -> None:
    api = serve(mocked, CUSTOMERS_EXPORT, Endpoint(PAGE)).then(answer)
    page = await client.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    assert page.has_more is False and len(api.calls) == 2
    assert seconds <= clock.sleeps[0] <= seconds * 1.1 + 0.01  # never sooner, lightly jittered
    assert recorder.retries == [(Environment.INTEGRATION, reason)]


async def test_a_5xx_without_retry_after_does_not_read_seconds_from_its_title(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
) -> None:
    serve(mocked, CUSTOMERS_EXPORT, Endpoint(PAGE)).then(
        problem(500, "Upstream timed out after 90 seconds.")
    )
    await client.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    assert 0.5 <= clock.sleeps[0] <= 1.0  # the ordinary first backoff


async def test_a_503_retry_after_beyond_the_budget_gives_up_at_once(
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    api = serve(
        mocked,
        CUSTOMERS_EXPORT,
        Endpoint(problem(503, "Service Unavailable", trace="t-503", headers={"Retry-After": when})),
    )
    config = ServiceTitanConfig(max_attempts=8, max_retry_seconds=300)
    async with make_client(config, clock, recorder) as st:
        with pytest.raises(ApiError) as info:
            await st.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    assert info.value.transient and info.value.status == 503
    assert "gave up after 1 attempt" in str(info.value)
    assert len(api.calls) == 1 and clock.sleeps == []


def exhaust_config(**kw: float) -> ServiceTitanConfig:
    return ServiceTitanConfig(max_attempts=int(kw.get("max_attempts", 3)), max_retry_seconds=300)


@pytest.mark.parametrize(
    ("answer", "error", "category"),
    [
        (
            problem(429, "Too Many Requests", headers={"Retry-After": "2"}),
            RateLimitError,
            ErrorCategory.RATE_LIMIT,
        ),
        (problem(503, "Service Unavailable", trace="t-503"), ApiError, ErrorCategory.API),
        (problem(409, "The service is suspended for maintenance."), ApiError, ErrorCategory.API),
        (aiohttp.ClientConnectionError("refused"), NetworkError, ErrorCategory.NETWORK),
        ({"status": 200, "body": "{"}, NetworkError, ErrorCategory.NETWORK),
    ],
)
async def test_exhausted_retries_raise_the_transient_class(
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
    answer: object,
    error: type[Exception],
    category: ErrorCategory,
) -> None:
    api = serve(mocked, CUSTOMERS_EXPORT, Endpoint(answer))  # type: ignore[arg-type]
    async with make_client(exhaust_config(), clock, recorder) as st:
        with pytest.raises(error) as info:
            await st.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    exc = info.value
    assert type(exc) is error
    assert exc.category is category  # type: ignore[attr-defined]
    assert exc.transient is True  # type: ignore[attr-defined]
    assert len(api.calls) == 3
    assert "gave up after 3 attempts" in str(exc)
    assert "tenant 123" in str(exc)
    if isinstance(exc, ApiError):
        assert exc.status in (503, 409)
        assert exc.trace_id is not None and exc.trace_id in str(exc)


async def test_total_retry_time_is_bounded(
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
) -> None:
    api = serve(mocked, CUSTOMERS_EXPORT, Endpoint(problem(500, "Internal Server Error")))
    config = ServiceTitanConfig(max_attempts=50, max_retry_seconds=20)
    started = clock.now
    async with make_client(config, clock, recorder) as st:
        with pytest.raises(ApiError) as info:
            await st.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    assert info.value.transient and info.value.status == 500
    assert clock.now - started <= 20
    assert 3 <= len(api.calls) < 50


async def test_a_retry_after_beyond_the_budget_gives_up_at_once(
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
) -> None:
    api = serve(
        mocked,
        CUSTOMERS_EXPORT,
        Endpoint(problem(429, "Too Many Requests", headers={"Retry-After": "3600"})),
    )
    config = ServiceTitanConfig(max_attempts=8, max_retry_seconds=300)
    async with make_client(config, clock, recorder) as st:
        with pytest.raises(RateLimitError):
            await st.tenant(access).fetch_export_page(DataType.CUSTOMERS, None)
    assert len(api.calls) == 1
    assert clock.sleeps == []


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, max_total_seconds=600, base_delay=1, max_delay=60)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (9, 60)]:
        delays = [policy.backoff(attempt, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def test_parse_retry_after() -> None:
    assert parse_retry_after("5", None) == 5
    assert parse_retry_after(" 1.5 ", "ignored 9 seconds") == 1.5
    assert parse_retry_after(None, "Rate limit is exceeded. Try again in 27 seconds.") == 27
    assert parse_retry_after("garbage", "wait 3 seconds") == 3
    assert parse_retry_after(None, "Too Many Requests") is None
    when = datetime.now(UTC) + timedelta(seconds=30)
    seconds = parse_retry_after(format_datetime(when, usegmt=True), None)
    assert seconds is not None and 25 <= seconds <= 31
