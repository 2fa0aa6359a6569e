"""Backfill: a first sync of a large tenant reads the list endpoints, several pages in flight, then
catches up with the export; interrupted, it resumes with the pages it has not committed. Real
PostgreSQL and the sandbox's list and export endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from stsync_daemon.daemon.planning import Planner
from stsync_daemon.embedded.postgres import PrivateCluster
from stsync_daemon.enums import DataType, Environment, ErrorCategory, SyncMode, SyncStatus
from stsync_daemon.errors import ValidationFailure
from stsync_daemon.requests import ProcessRequest
from stsync_daemon.sandbox import EndpointKind, FaultRule, SandboxConfig
from stsync_daemon.servicetitan.client import TenantClient
from stsync_daemon.store.syncs import SyncStore
from stsync_daemon.sync.engine import SyncControl, SyncRequest
from tests.support import Rig, engine_rig, tenant

PROD = Environment.PRODUCTION
CUSTOMERS, INVOICES = DataType.CUSTOMERS, DataType.INVOICES
BIG = tenant(501, customers=3000, invoices=1200)
SMALL = tenant(502, customers=300, invoices=100)
BACKFILL = {"backfill_min_records": 1000, "backfill_page_size": 200, "backfill_concurrency": 4}
LIST = {CUSTOMERS: EndpointKind.CUSTOMERS_LIST, INVOICES: EndpointKind.INVOICES_LIST}
EXPORT = {CUSTOMERS: EndpointKind.CUSTOMERS_EXPORT, INVOICES: EndpointKind.INVOICES_EXPORT}


@pytest.fixture
async def rig(database_dsn: str, tmp_path: Path) -> AsyncIterator[Rig]:
    config = SandboxConfig(tenants=(BIG, SMALL), export_page_size=100, seed=7)
    async with engine_rig(config, database_dsn, tmp_path, sync=BACKFILL) as rig:
        yield rig


def big_alone(
    dsn: str, tmp_path: Path, *, export_page_size: int = 100, **servicetitan: Any
) -> AbstractAsyncContextManager[Rig]:
    """A rig whose sandbox holds the big tenant only, with backfills on."""
    config = SandboxConfig(tenants=(BIG,), export_page_size=export_page_size, seed=7)
    return engine_rig(config, dsn, tmp_path, sync=BACKFILL, servicetitan=servicetitan)


def requests(rig: Rig, tenant_id: int, kind: EndpointKind) -> int:
    return rig.sandbox.counters(tenant_id, PROD).total(kind=kind, status=200)


async def cursor(rig: Rig, credential_id: object, data_type: DataType) -> dict[str, object]:
    row = await rig.pool.fetchrow(
        "SELECT continue_from, backfill_started_at, backfill_done FROM stsync.cursors "
        "WHERE credential_id = $1 AND data_type = $2",
        credential_id,
        data_type.value,
    )
    assert row is not None
    return dict(row)


async def until_pages_committed(rig: Rig, credential_id: object, pages: int) -> None:
    """Wait (up to 10 s) until the customers backfill has committed `pages` pages."""
    for _ in range(200):
        await asyncio.sleep(0.05)
        done = await rig.pool.fetchval(
            "SELECT coalesce(cardinality(backfill_done), 0) FROM stsync.cursors "
            "WHERE credential_id = $1 AND data_type = 'customers'",
            credential_id,
        )
        if done and done >= pages:
            return


@pytest.mark.parametrize("data_type", [CUSTOMERS, INVOICES])
async def test_a_large_first_sync_backfills_then_hands_over_to_the_export(
    rig: Rig, data_type: DataType
) -> None:
    cred = await rig.add(BIG.tenant_id)
    result = await rig.sync(cred, data_type)
    assert result.status is SyncStatus.COMPLETED, result.error_message
    await rig.assert_equal_truth(BIG.tenant_id, data_type)
    records = BIG.customers if data_type is CUSTOMERS else BIG.invoices
    pages = -(-records // 200)
    # The count, then every page once; the export only to catch up (a page or two, not 12 to 30).
    assert requests(rig, BIG.tenant_id, LIST[data_type]) == 1 + pages
    assert requests(rig, BIG.tenant_id, EXPORT[data_type]) <= 2
    state = await cursor(rig, cred.id, data_type)
    assert state["continue_from"] and state["backfill_started_at"] is None
    assert state["backfill_done"] == []
    # From now on, incremental syncs read the export's token as always.
    await rig.sandbox.mutate(BIG.tenant_id, PROD, data_type, modify=7, create=3)
    lists = requests(rig, BIG.tenant_id, LIST[data_type])
    again = await rig.sync(cred, data_type)
    assert again.status is SyncStatus.COMPLETED and again.records_processed < 50
    assert requests(rig, BIG.tenant_id, LIST[data_type]) == lists
    await rig.assert_equal_truth(BIG.tenant_id, data_type)


async def test_a_small_tenant_reads_the_export_as_before(rig: Rig) -> None:
    cred = await rig.add(SMALL.tenant_id)
    assert (await rig.sync(cred, CUSTOMERS)).status is SyncStatus.COMPLETED
    await rig.assert_equal_truth(SMALL.tenant_id, CUSTOMERS)
    assert requests(rig, SMALL.tenant_id, LIST[CUSTOMERS]) == 1  # the count only
    assert requests(rig, SMALL.tenant_id, EXPORT[CUSTOMERS]) == 3


async def test_changes_made_during_the_backfill_all_arrive(rig: Rig) -> None:
    """Records modified, deactivated and created while the pages are read: the catch-up export
    brings them, so the tenant equals the truth once the sync is done."""
    cred = await rig.add(BIG.tenant_id)
    rig.sandbox.set_faults(FaultRule(endpoint=EndpointKind.CUSTOMERS_LIST, latency_ms=40))
    sync = asyncio.create_task(rig.sync(cred, CUSTOMERS))
    for _ in range(6):
        await asyncio.sleep(0.05)
        await rig.sandbox.mutate(BIG.tenant_id, PROD, CUSTOMERS, modify=20, deactivate=5, create=8)
    result = await sync
    assert result.status is SyncStatus.COMPLETED, result.error_message
    await rig.assert_equal_truth(BIG.tenant_id, CUSTOMERS)


async def test_an_interrupted_backfill_resumes_with_the_pages_it_had_not_committed(
    rig: Rig,
) -> None:
    cred = await rig.add(BIG.tenant_id)
    rig.sandbox.set_faults(FaultRule(endpoint=EndpointKind.CUSTOMERS_LIST, latency_ms=60))
    control = SyncControl()
    sync = asyncio.create_task(
        rig.engine.synchronize(SyncRequest(cred, CUSTOMERS), control=control)
    )
    await until_pages_committed(rig, cred.id, 4)
    control.cancel_status = SyncStatus.INTERRUPTED
    sync.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sync
    first = await cursor(rig, cred.id, CUSTOMERS)
    committed = len(first["backfill_done"])  # type: ignore[arg-type]
    assert 4 <= committed < 15 and first["continue_from"] is None
    rig.sandbox.set_faults()
    await asyncio.sleep(0.3)  # requests in flight at the cancel still finish on the server
    before = requests(rig, BIG.tenant_id, EndpointKind.CUSTOMERS_LIST)
    result = await rig.sync(cred, CUSTOMERS)
    assert result.status is SyncStatus.COMPLETED, result.error_message
    # No new count, and only the pages not committed before.
    assert requests(rig, BIG.tenant_id, EndpointKind.CUSTOMERS_LIST) - before == 15 - committed
    await rig.assert_equal_truth(BIG.tenant_id, CUSTOMERS)


@pytest.mark.timeout(120)
async def test_postgresql_stopping_mid_backfill_fails_the_sync_and_the_next_one_resumes(
    own_cluster: PrivateCluster, tmp_path: Path
) -> None:
    async with big_alone(own_cluster.dsn(), tmp_path) as rig:
        cred = await rig.add(BIG.tenant_id)
        rig.sandbox.set_faults(FaultRule(endpoint=EndpointKind.CUSTOMERS_LIST, latency_ms=80))
        sync = asyncio.create_task(rig.sync(cred, CUSTOMERS))
        await until_pages_committed(rig, cred.id, 4)
        await asyncio.to_thread(own_cluster.stop)
        await asyncio.sleep(2)  # pages keep arriving; their writes fail, then the end's
        assert not sync.done()
        await asyncio.to_thread(own_cluster.start)
        result = await asyncio.wait_for(sync, 60)
        assert (result.status, result.error_category) == (
            SyncStatus.FAILED,
            ErrorCategory.DATABASE,
        )
        kept = await cursor(rig, cred.id, CUSTOMERS)
        done = len(kept["backfill_done"])  # type: ignore[arg-type]
        assert kept["backfill_started_at"] is not None and 4 <= done < 15
        assert (
            await rig.pool.fetchval("SELECT count(*) FROM servicetitan.customers")
            == done * BACKFILL["backfill_page_size"]
        )
        rig.sandbox.set_faults()
        await asyncio.sleep(0.3)
        before = requests(rig, BIG.tenant_id, EndpointKind.CUSTOMERS_LIST)
        resumed = await rig.sync(cred, CUSTOMERS)
        assert resumed.status is SyncStatus.COMPLETED, resumed.error_message
        assert requests(rig, BIG.tenant_id, EndpointKind.CUSTOMERS_LIST) - before == 15 - done
        await rig.assert_equal_truth(BIG.tenant_id, CUSTOMERS)


async def test_a_page_that_keeps_failing_fails_the_sync_and_keeps_the_others(
    database_dsn: str, tmp_path: Path
) -> None:
    # One attempt per request: the first 500 on a page fails the sync.
    async with big_alone(database_dsn, tmp_path, max_attempts=1) as rig:
        cred = await rig.add(BIG.tenant_id)
        rig.sandbox.set_faults(
            FaultRule(endpoint=EndpointKind.INVOICES_LIST, server_error_share=0.2, seed=3)
        )
        failed = await rig.sync(cred, INVOICES)
        assert failed.status is SyncStatus.FAILED, failed.error_message
        kept = await cursor(rig, cred.id, INVOICES)
        assert kept["backfill_started_at"] is not None and kept["continue_from"] is None
        committed = len(kept["backfill_done"])  # type: ignore[arg-type]
        assert 0 < committed < 6
        rig.sandbox.set_faults()
        result = await rig.sync(cred, INVOICES)
        assert result.status is SyncStatus.COMPLETED, result.error_message
        await rig.assert_equal_truth(BIG.tenant_id, INVOICES)


async def test_a_full_sync_of_a_large_tenant_backfills_too(rig: Rig) -> None:
    cred = await rig.add(BIG.tenant_id)
    assert (await rig.sync(cred, INVOICES)).status is SyncStatus.COMPLETED
    lists = requests(rig, BIG.tenant_id, EndpointKind.INVOICES_LIST)
    full = await rig.sync(cred, INVOICES, mode=SyncMode.FULL)
    assert full.status is SyncStatus.COMPLETED
    assert requests(rig, BIG.tenant_id, EndpointKind.INVOICES_LIST) - lists == 1 + 6
    await rig.assert_equal_truth(BIG.tenant_id, INVOICES)


async def test_a_dry_run_says_which_pairs_would_backfill_and_how_long_they_would_take(
    rig: Rig,
) -> None:
    big, small = await rig.add(BIG.tenant_id), await rig.add(SMALL.tenant_id)
    planner = Planner(
        credentials=rig.store, syncs=SyncStore(rig.pool), client=rig.client, settings=rig.settings
    )
    rig.sandbox.set_faults(FaultRule(latency_ms=100))
    plan = await planner.plan_for(ProcessRequest(dry_run=True, estimate=True))
    modes = {(i["tenant_id"], i["data_type"]): i["mode"] for i in plan["items"]}
    assert modes == {
        (BIG.tenant_id, "customers"): "backfill",
        (BIG.tenant_id, "invoices"): "backfill",
        (SMALL.tenant_id, "customers"): "full",
        (SMALL.tenant_id, "invoices"): "full",
    }
    seconds = {(i["tenant_id"], i["data_type"]): i["estimated_seconds"] for i in plan["items"]}
    # 15 pages of 200, 4 at a time at ~0.1 s: about 0.6 s; read as an export it would be 0.7 s.
    assert 0.4 <= seconds[(BIG.tenant_id, "customers")] <= 1.5  # type: ignore[operator]
    assert 0.1 <= seconds[(SMALL.tenant_id, "invoices")] <= 0.6  # type: ignore[operator]
    rig.sandbox.set_faults()
    assert (await rig.sync(big, CUSTOMERS)).status is SyncStatus.COMPLETED
    assert (await rig.sync(small, CUSTOMERS)).status is SyncStatus.COMPLETED
    plan = await planner.plan_for(
        ProcessRequest(dry_run=True, estimate=True, data_type="customers")
    )
    assert {i["mode"] for i in plan["items"]} == {"incremental"}


async def test_a_list_endpoint_that_fails_leaves_the_export_to_do_the_first_sync(
    database_dsn: str, tmp_path: Path
) -> None:
    async with big_alone(database_dsn, tmp_path, export_page_size=500, max_attempts=2) as rig:
        cred = await rig.add(BIG.tenant_id)
        rig.sandbox.set_faults(FaultRule(endpoint=EndpointKind.CUSTOMERS_LIST, malformed_share=1.0))
        result = await rig.sync(cred, CUSTOMERS)
        assert result.status is SyncStatus.COMPLETED, result.error_message
        await rig.assert_equal_truth(BIG.tenant_id, CUSTOMERS)
        assert requests(rig, BIG.tenant_id, EndpointKind.CUSTOMERS_EXPORT) == 6


async def test_list_pages_that_cannot_be_read_give_way_to_the_export(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page ServiceTitan answers in a shape no retry changes: the backfill is abandoned and the
    same sync reads the export from the beginning; the pages committed meanwhile do no harm."""
    cred = await rig.add(BIG.tenant_id)
    real = TenantClient.fetch_list_page
    served = 0

    async def fetch(self: TenantClient, data_type: DataType, number: int, size: int) -> object:
        nonlocal served
        served += 1
        if served > 3:
            raise ValidationFailure("the customers list's answer does not have the expected shape")
        return await real(self, data_type, number, size)

    monkeypatch.setattr(TenantClient, "fetch_list_page", fetch)
    result = await rig.sync(cred, CUSTOMERS)
    assert result.status is SyncStatus.COMPLETED, result.error_message
    await rig.assert_equal_truth(BIG.tenant_id, CUSTOMERS)
    state = await cursor(rig, cred.id, CUSTOMERS)
    assert state["continue_from"] and state["backfill_started_at"] is None
    assert requests(rig, BIG.tenant_id, EndpointKind.CUSTOMERS_EXPORT) == 30  # 3000 / 100
