"""The list endpoints as a backfill reads them: deep `active=Any&sort=+Id` paging with several pages
in flight, the shared rate limit, latency and faults aimed at lists, and data changing meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from stsync_daemon.enums import DataType
from stsync_daemon.sandbox import EndpointKind, FaultKind, FaultRule, Sandbox, truth_digest
from stsync_daemon.sandbox.clock import format_ticks, now_ticks

from .conftest import CUSTOMERS, INVOICES, PROD, StClient, make_config, spec

BACKFILL = {"active": "Any", "sort": "+Id", "includeTotal": "true"}


@pytest.fixture
async def big() -> AsyncIterator[Sandbox]:
    config = make_config(tenants=(spec(1, customers=12_000, invoices=3_000),))
    async with Sandbox(config) as sb:
        yield sb


async def _page(client: StClient, data_type: DataType, page: int, **params: str) -> Any:
    query = {**BACKFILL, "page": str(page), "pageSize": "5000", **params}
    reply = await client.get(client.path(data_type, export=False), query)
    assert reply.status == 200, reply.body
    return reply.json()


@pytest.mark.parametrize("data_type", [CUSTOMERS, INVOICES])
async def test_pages_in_flight_to_the_end_are_exactly_the_truth(
    big: Sandbox, session: aiohttp.ClientSession, data_type: DataType
) -> None:
    client = StClient(big, session, big.config.tenants[0])
    await big.mutate(1, PROD, data_type, modify=20, deactivate=20, create=7)
    first = await _page(client, data_type, 1)
    pages = -(-first["totalCount"] // 5000)
    rest = await asyncio.gather(*(_page(client, data_type, n) for n in range(2, pages + 1)))
    records = [r for body in (first, *rest) for r in body["data"]]
    truth = big.truth(1, PROD, data_type)
    assert first["totalCount"] == truth.count
    assert [b["hasMore"] for b in (first, *rest)] == [True] * (pages - 1) + [False]
    ids = [r["id"] for r in records]
    assert ids == sorted(set(ids))
    digest = truth_digest((r["id"], r["modifiedOn"], r["active"]) for r in records)
    assert digest == truth.digest
    beyond = await _page(client, data_type, pages + 1)
    assert beyond["data"] == [] and beyond["hasMore"] is False
    assert beyond["totalCount"] == truth.count


async def test_list_records_are_the_export_records(big: Sandbox, client_big: StClient) -> None:
    await big.mutate(1, PROD, CUSTOMERS, modify=30)
    exported, _ = await client_big.export_all(CUSTOMERS)
    by_id = {r["id"]: r for r in exported}
    for page in (1, 2, 3):
        for record in (await _page(client_big, CUSTOMERS, page))["data"]:
            assert record == by_id[record["id"]]


@pytest.fixture
def client_big(big: Sandbox, session: aiohttp.ClientSession) -> StClient:
    return StClient(big, session, big.config.tenants[0])


async def test_offset_paging_while_records_change(sandbox: Sandbox, client: StClient) -> None:
    """Pages are offsets into the data as it is at each request, as the real API's are."""
    path = client.path(CUSTOMERS, export=False)

    async def ids(page: int, **params: str) -> list[int]:
        query = {"page": str(page), "pageSize": "10", **params}
        return [r["id"] for r in (await client.get(path, query)).json()["data"]]

    dataset = sandbox.state.dataset(1, PROD, CUSTOMERS)
    active_before = await ids(1) + await ids(2) + await ids(3)
    any_before = await ids(1, active="Any") + await ids(2, active="Any")

    # Deactivating a record of page 1 moves every later active record one place back: the first
    # record of page 2, as it was, now ends page 1 and is skipped by a client going on to page 2.
    dataset.touch(active_before[3], active=False)
    assert await ids(2) == active_before[11:21]
    # Reactivating it moves them forward again: the last record of page 2 opens page 3 once more.
    page_two = await ids(2)
    dataset.touch(active_before[3], active=True)
    assert (await ids(3))[0] == page_two[-1]
    # With active=Any and id order neither changes nor new records move anything read so far.
    dataset.touch(any_before[2], active=False)
    (created,) = dataset.create(1)
    assert await ids(2, active="Any") == any_before[10:20]
    last = (await client.get(path, {"active": "Any", "sort": "-Id", "pageSize": "1"})).json()
    assert last["data"][0]["id"] == created
    # Newest first, a new record pushes everything one forward: page 1's last record opens page 2.
    newest = await ids(1, active="Any", sort="-Id")
    dataset.create(1)
    assert (await ids(2, active="Any", sort="-Id"))[0] == newest[-1]
    # By ModifiedOn, a change moves the record to the end: later pages shift back by one.
    by_modified = await ids(1, sort="+ModifiedOn", active="Any")
    dataset.touch(by_modified[0])
    assert (await ids(1, sort="+ModifiedOn", active="Any"))[:9] == by_modified[1:]


async def test_changes_during_a_listing_are_found_by_an_export_from_its_start(
    big: Sandbox, client_big: StClient
) -> None:
    started = format_ticks(now_ticks() - 10_000_000)
    listed = (await _page(client_big, CUSTOMERS, 1))["data"]
    changed = await big.mutate(1, PROD, CUSTOMERS, modify=15, deactivate=5, create=3)
    listed += (await _page(client_big, CUSTOMERS, 2))["data"]
    listed += (await _page(client_big, CUSTOMERS, 3))["data"]
    exported, _ = await client_big.export_all(CUSTOMERS, started)
    touched = {*changed.modified, *changed.deactivated, *changed.created}
    assert {r["id"] for r in exported} == touched
    # Listed then exported, upserted by id: exactly the truth.
    merged = {r["id"]: r for r in listed} | {r["id"]: r for r in exported}
    rows = ((r["id"], r["modifiedOn"], r["active"]) for r in merged.values())
    assert truth_digest(rows) == big.truth(1, PROD, CUSTOMERS).digest


async def test_lists_and_exports_share_the_tenants_rate_limit(
    session: aiohttp.ClientSession,
) -> None:
    config = make_config(rate_limit_per_second=20, app_keys=("ak-test", "ak-other"))
    async with Sandbox(config) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        await client.token()
        list_path = client.path(CUSTOMERS, export=False)
        replies = await asyncio.gather(
            *(client.export_page(CUSTOMERS) for _ in range(12)),
            *(client.get(list_path, {"pageSize": "1"}) for _ in range(6)),
            *(client.get(client.path(INVOICES, export=False)) for _ in range(6)),
        )
        assert sorted(r.status for r in replies).count(429) == 4
        # The list requests over the budget are refused like any other, and counted as lists.
        assert (await client.get(list_path)).status == 429
        counters = sb.counters(1, PROD)
        limited = sum(
            counters.total(kind=kind, status=429)
            for kind in (
                EndpointKind.CUSTOMERS_EXPORT,
                EndpointKind.CUSTOMERS_LIST,
                EndpointKind.INVOICES_LIST,
            )
        )
        assert limited == 5
        assert counters.total(kind=EndpointKind.CUSTOMERS_LIST, status=429) >= 1
        # The budget is per app: another app key still gets through for the same tenant.
        assert (await client.get(list_path, app_key="ak-other")).status == 200


async def test_latency_and_faults_can_aim_at_the_list_endpoints(
    sandbox: Sandbox, client: StClient
) -> None:
    await client.token()
    customers_list = client.path(CUSTOMERS, export=False)
    sandbox.set_faults(FaultRule(endpoint=EndpointKind.CUSTOMERS_LIST, latency_ms=300))
    start = time.monotonic()
    assert (await client.get(customers_list)).status == 200
    assert time.monotonic() - start >= 0.3
    assert (await client.export_page(CUSTOMERS)).status == 200
    # Counted, not timed (a loaded machine may be slow anyway): only the list was delayed.
    assert sandbox.counters().faults[(1, PROD, FaultKind.LATENCY)] == 1

    sandbox.set_faults(FaultRule(endpoint=EndpointKind.CUSTOMERS_LIST, server_error_share=1.0))
    assert (await client.get(customers_list)).status == 500
    assert (await client.export_page(CUSTOMERS)).status == 200
    assert (await client.get(client.path(INVOICES, export=False))).status == 200
    sandbox.set_faults(FaultRule(endpoint=EndpointKind.INVOICES_LIST, maintenance_share=1.0))
    assert (await client.get(client.path(INVOICES, export=False))).status == 409
    assert (await client.get(customers_list)).status == 200

    sandbox.set_faults(FaultRule(endpoint=EndpointKind.CUSTOMERS_LIST, malformed_share=1.0))
    reply = await client.get(customers_list)
    assert reply.status == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(reply.body)
    sandbox.set_faults(FaultRule(endpoint=EndpointKind.CUSTOMERS_LIST, drop_share=1.0))
    with pytest.raises(aiohttp.ClientPayloadError):
        await client.get(customers_list)
    assert (await client.export_page(CUSTOMERS)).status == 200
    counted = sandbox.counters(1, PROD)
    assert counted.total(kind=EndpointKind.CUSTOMERS_LIST, status=500) == 1
    assert counted.total(kind=EndpointKind.INVOICES_LIST, status=409) == 1


async def test_fault_rules_by_endpoint_through_the_admin_api(
    sandbox: Sandbox, client: StClient
) -> None:
    url = f"{sandbox.base_url}/_sandbox/faults"
    rules = {"rules": [{"endpoint": "customers_list", "rate_limit_share": 1.0}]}
    async with client.session.put(url, json=rules) as response:
        assert response.status == 200
        assert (await response.json())["rules"][0]["endpoint"] == "customers_list"
    reply = await client.get(client.path(CUSTOMERS, export=False))
    assert reply.status == 429 and reply.headers["Retry-After"] == "1"
    assert (await client.export_page(CUSTOMERS)).status == 200
    bad = {"rules": [{"endpoint": "token", "server_error_share": 1.0}]}
    async with client.session.put(url, json=bad) as response:
        assert response.status == 400
        assert "token endpoint" in (await response.text())


async def test_lists_show_changes_at_once_while_exports_delay_them(
    sandbox: Sandbox, client: StClient
) -> None:
    sandbox.update_settings(visibility_delay_seconds=900)
    started = format_ticks(now_ticks() - 10_000_000)
    (changed,) = (await sandbox.mutate(1, PROD, CUSTOMERS, modify=1)).modified
    listed = await client.get(
        client.path(CUSTOMERS, export=False), {"ids": str(changed), "active": "Any"}
    )
    (record,) = listed.json()["data"]
    assert record["modifiedOn"] > "2025"  # the new version, not the base record's
    hidden = (await client.export_page(CUSTOMERS, started)).json()
    assert hidden["data"] == []
    recent = (await client.export_page(CUSTOMERS, started, includeRecentChanges="true")).json()
    assert [r["id"] for r in recent["data"]] == [changed]
    assert recent["data"][0] == record
