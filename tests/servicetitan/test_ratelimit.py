"""The proactive limiter: no 1-second window holds more than the configured rate, shared per tenant."""

from __future__ import annotations

import asyncio
import time

from aioresponses import aioresponses
from pydantic import SecretStr

from stsync_daemon.config import ServiceTitanConfig
from stsync_daemon.enums import DataType, Environment
from stsync_daemon.servicetitan import CredentialAccess, ServiceTitanClient
from stsync_daemon.servicetitan.ratelimit import RateLimiter

from .conftest import (
    CUSTOMERS_LIST,
    Endpoint,
    FakeClock,
    Recorder,
    TokenServer,
    make_client,
    ok,
    serve,
)

LIST_OK = ok({"hasMore": False, "totalCount": 1, "data": []})


async def test_n_requests_take_at_least_n_minus_one_over_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(55, clock=clock, sleep=clock.sleep)
    started = clock.now
    stamps = []
    for _ in range(200):
        await limiter.acquire()
        stamps.append(clock.now)
    assert clock.now - started >= 199 / 55 - 1e-9
    for i, t in enumerate(stamps):  # any window [t, t+1) holds at most 55 requests
        assert sum(1 for u in stamps[i:] if u < t + 1.0) <= 55


async def test_concurrent_callers_queue_in_order() -> None:
    limiter = RateLimiter(50, clock=time.monotonic, sleep=asyncio.sleep)
    waits = await asyncio.gather(*(limiter.acquire() for _ in range(5)))
    assert [round(w, 3) for w in waits] == [0.0, 0.02, 0.04, 0.06, 0.08]


async def test_the_limiter_is_shared_per_app_key_and_tenant(
    access: CredentialAccess,
    clock: FakeClock,
    recorder: Recorder,
) -> None:
    st = make_client(ServiceTitanConfig(), clock, recorder)
    same = CredentialAccess(
        credential_id="cred-2",
        environment=access.environment,
        tenant_id=access.tenant_id,
        client_id="other-client",
        client_secret=SecretStr("x"),
        app_key=access.app_key,
    )
    other_key = CredentialAccess(**{**same.__dict__, "app_key": SecretStr("another-app")})
    other_tenant = CredentialAccess(**{**same.__dict__, "tenant_id": 999})
    assert st.tenant(access)._limiter is st.tenant(same)._limiter
    assert st.tenant(access)._limiter is not st.tenant(other_key)._limiter
    assert st.tenant(access)._limiter is not st.tenant(other_tenant)._limiter
    assert st.tenant(access)._tokens is not st.tenant(same)._tokens
    await st.close()


async def test_requests_through_the_client_wait_and_report_it(
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    clock: FakeClock,
    recorder: Recorder,
) -> None:
    serve(mocked, CUSTOMERS_LIST, Endpoint(LIST_OK))
    async with make_client(ServiceTitanConfig(requests_per_second=4), clock, recorder) as st:
        started = clock.now
        await asyncio.gather(
            *(st.tenant(access).count_changed(DataType.CUSTOMERS, None) for _ in range(9))
        )
    assert clock.now - started >= 2.0 - 1e-9
    proactive = [w for w in recorder.waits if w[2] == "proactive"]
    assert len(proactive) == 8 and all(env is Environment.INTEGRATION for env, _, _ in proactive)


async def test_real_time_rate_is_respected(
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    api = serve(mocked, CUSTOMERS_LIST, Endpoint(LIST_OK))
    config = ServiceTitanConfig(requests_per_second=40)
    async with ServiceTitanClient(config) as st:
        started = time.monotonic()
        await asyncio.gather(
            *(st.tenant(access).count_changed(DataType.CUSTOMERS, None) for _ in range(21))
        )
        elapsed = time.monotonic() - started
    assert len(api.calls) == 21
    assert elapsed >= 20 / 40 - 0.02


async def test_a_stalled_event_loop_does_not_release_a_burst() -> None:
    """Waiters all woken late by a busy loop take fresh, spaced slots instead of going together."""
    now = [0.0]
    granted: list[float] = []

    async def stalled_sleep(seconds: float) -> None:
        now[0] += seconds + 0.5  # every sleep overshoots by half a second
        await asyncio.sleep(0)

    limiter = RateLimiter(10, clock=lambda: now[0], sleep=stalled_sleep)

    async def one() -> None:
        await limiter.acquire()
        granted.append(now[0])

    await asyncio.gather(*(one() for _ in range(20)))
    granted.sort()
    for i, t in enumerate(granted):  # any window [t, t+1) holds at most 10 requests
        assert sum(1 for u in granted[i:] if u < t + 1.0) <= 10
