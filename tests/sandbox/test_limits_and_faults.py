"""Rate limiting, request counters, and every kind of injected fault."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from stsync_daemon.sandbox import EndpointKind, FaultKind, FaultRule, Sandbox

from .conftest import CUSTOMERS, INVOICES, PROD, StClient, make_config, spec


async def test_rate_limit_answers_429_with_retry_after(session: aiohttp.ClientSession) -> None:
    async with Sandbox(make_config(rate_limit_per_second=20)) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        await client.token()
        path = client.path(CUSTOMERS, export=False)
        replies = await asyncio.gather(*(client.get(path, {"pageSize": "1"}) for _ in range(30)))
        statuses = sorted(r.status for r in replies)
        assert statuses.count(200) == 20 and statuses.count(429) == 10
        limited = next(r for r in replies if r.status == 429)
        assert int(limited.headers["Retry-After"]) >= 1
        body = limited.json()
        assert set(body) == {"type", "title", "status", "traceId", "errors", "data"}
        assert body["status"] == 429 and body["title"].endswith("seconds.")
        # Another tenant has its own budget.
        other = StClient(sb, session, sb.config.tenants[1])
        assert (await other.get(other.path(CUSTOMERS, export=False))).status == 200
        counters = sb.counters(1, PROD)
        assert counters.total(kind=EndpointKind.CUSTOMERS_LIST, status=429) == 10
        assert counters.total(kind=EndpointKind.CUSTOMERS_LIST, status=200) == 20
        assert counters.peak(1, PROD) == 30
        await asyncio.sleep(1.05)
        assert (await client.get(path, {"pageSize": "1"})).status == 200


async def test_peak_reflects_a_paced_client(session: aiohttp.ClientSession) -> None:
    async with Sandbox(make_config(rate_limit_per_second=60)) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        path = client.path(CUSTOMERS, export=False)
        await client.token()
        start = time.monotonic()
        for n in range(40):
            await asyncio.sleep(max(0.0, start + n / 30 - time.monotonic()))
            assert (await client.get(path, {"pageSize": "1"})).status == 200
        counters = sb.counters()
        assert 25 <= counters.peak(1, PROD) <= 32
        assert counters.total(tenant_id=1, kind=EndpointKind.TOKEN, status=200) == 1


async def _statuses(client: StClient, n: int, data_type: object = CUSTOMERS) -> list[int]:
    return [(await client.export_page(data_type)).status for _ in range(n)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "status", "kind"),
    [
        ("rate_limit_share", 429, FaultKind.RATE_LIMIT),
        ("server_error_share", 500, FaultKind.SERVER_ERROR),
        ("maintenance_share", 409, FaultKind.MAINTENANCE),
    ],
)
async def test_status_faults(
    sandbox: Sandbox, client: StClient, field: str, status: int, kind: FaultKind
) -> None:
    sandbox.set_faults(FaultRule(**{field: 0.5, "seed": 3}))  # type: ignore[arg-type]
    statuses = await _statuses(client, 40)
    assert 8 <= statuses.count(status) <= 32
    assert set(statuses) == {200, status}
    reply = next(
        r for r in [await client.export_page(CUSTOMERS) for _ in range(20)] if r.status == status
    )
    body = reply.json()
    assert body["status"] == status
    if status == 409:
        assert body["title"] == "The service is suspended for maintenance. Please try again later."
    if status == 429:
        assert reply.headers["Retry-After"] == "1"
    assert sandbox.counters().faults[(1, PROD, kind)] >= 8


async def test_faults_are_seeded_and_replayable(sandbox: Sandbox, client: StClient) -> None:
    runs = []
    for _ in range(2):
        sandbox.set_faults(FaultRule(server_error_share=0.3, seed=42))
        runs.append(await _statuses(client, 30))
    assert runs[0] == runs[1]
    sandbox.set_faults(FaultRule(server_error_share=0.3, seed=43))
    assert await _statuses(client, 30) != runs[0]


async def test_faults_can_be_scoped_to_a_tenant_and_data_type(
    sandbox: Sandbox, client: StClient
) -> None:
    sandbox.set_faults(FaultRule(tenant_id=2, server_error_share=1.0))
    assert set(await _statuses(client, 5)) == {200}
    other = StClient(sandbox, client.session, sandbox.config.tenants[1])
    assert set(await _statuses(other, 5)) == {500}
    sandbox.set_faults(FaultRule(data_type=INVOICES, maintenance_share=1.0))
    assert set(await _statuses(client, 3)) == {200}
    assert set(await _statuses(client, 3, INVOICES)) == {409}
    sandbox.set_faults()
    assert set(await _statuses(client, 3, INVOICES)) == {200}


async def test_latency_is_added(sandbox: Sandbox, client: StClient) -> None:
    await client.token()
    sandbox.set_faults(FaultRule(latency_ms=150, latency_jitter_ms=50))
    start = time.monotonic()
    assert (await client.export_page(CUSTOMERS)).status == 200
    assert 0.15 <= time.monotonic() - start < 1.0


async def test_malformed_json(sandbox: Sandbox, client: StClient) -> None:
    sandbox.set_faults(FaultRule(malformed_share=1.0))
    reply = await client.export_page(CUSTOMERS)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(reply.body)


async def test_connection_dropped_mid_body(sandbox: Sandbox, client: StClient) -> None:
    await client.token()
    sandbox.set_faults(FaultRule(drop_share=1.0))
    with pytest.raises(aiohttp.ClientPayloadError):
        await client.export_page(CUSTOMERS)
    sandbox.set_faults()
    assert (await client.export_page(CUSTOMERS)).status == 200
    assert sandbox.counters().faults[(1, PROD, FaultKind.DROP)] == 1


async def test_faults_from_config_apply_from_the_start(session: aiohttp.ClientSession) -> None:
    config = make_config(
        tenants=(spec(1),), faults=(FaultRule(server_error_share=1.0, environment=PROD),)
    )
    async with Sandbox(config) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        assert set(await _statuses(client, 3)) == {500}
        # The token endpoint is never faulted.
        assert (await client.fetch_token()).status == 200


async def test_repeat_token_answers_more_with_the_token_it_was_given(
    sandbox: Sandbox, client: StClient
) -> None:
    first = (await client.export_page(CUSTOMERS)).json()
    token = first["continueFrom"]
    sandbox.set_faults(FaultRule(repeat_token_share=1.0, data_type=CUSTOMERS))
    for _ in range(3):
        reply = await client.export_page(CUSTOMERS, token)
        assert reply.status == 200
        assert reply.json() == {"hasMore": True, "continueFrom": token, "data": []}
    assert (await client.export_page(CUSTOMERS, "2019-03-01")).json()[
        "continueFrom"
    ] == "2019-03-01"
    assert (await client.export_page(CUSTOMERS, "not-a-token")).status == 400
    start = (await client.export_page(CUSTOMERS)).json()
    assert start["hasMore"] is True and start["data"] == [] and start["continueFrom"]
    # Lists and the other data type are not affected, and not counted.
    listed = await client.get(client.path(CUSTOMERS, export=False))
    assert listed.status == 200 and len(listed.json()["data"]) == 50
    assert (await client.export_page(INVOICES)).json()["data"]
    # Counted when drawn: the refused token too.
    assert sandbox.counters().faults[(1, PROD, FaultKind.REPEAT_TOKEN)] == 6
    # The start token is a real one: without the fault it leads to the first page.
    sandbox.set_faults()
    again = (await client.export_page(CUSTOMERS, start["continueFrom"])).json()
    assert again["data"] == first["data"]
