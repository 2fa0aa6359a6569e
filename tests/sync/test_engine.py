"""The sync engine against the sandbox and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from stsync_daemon.enums import (
    CredentialStatus,
    DataType,
    Environment,
    ErrorCategory,
    SyncMode,
    SyncStatus,
)
from stsync_daemon.errors import NetworkError
from stsync_daemon.sandbox import EndpointKind, FaultRule, SandboxConfig, truth_digest
from stsync_daemon.servicetitan import ExportPage
from stsync_daemon.store.syncs import sweep_orphans
from stsync_daemon.sync.engine import SyncControl, SyncRequest
from tests.support import Rig, db_truth, engine_rig, tenant

PROD = Environment.PRODUCTION


@pytest.fixture
async def rig(database_dsn: str, tmp_path: Path) -> AsyncIterator[Rig]:
    config = SandboxConfig(
        tenants=(
            tenant(101, customers=1200, invoices=900),
            tenant(102, customers=300, invoices=200),
        ),
        export_page_size=100,
        seed=7,
    )
    async with engine_rig(config, database_dsn, tmp_path) as made:
        yield made


async def test_full_sync_of_two_tenants_equals_sandbox_truth(rig: Rig) -> None:
    a, b = await rig.add(101), await rig.add(102)
    results = await asyncio.gather(
        *(rig.engine.synchronize(SyncRequest(c, dt)) for c in (a, b) for dt in DataType)
    )
    for result in results:
        assert result.status is SyncStatus.COMPLETED, result.error_message
        assert result.records_failed == 0
    assert results[0].records_processed == 1200
    for tid in (101, 102):
        for dt in DataType:
            await rig.assert_equal_truth(tid, dt)
    # Inactive records are kept, with active = false.
    inactive = await rig.pool.fetchval(
        "SELECT count(*) FROM servicetitan.customers WHERE NOT active"
    )
    assert (
        inactive
        == rig.sandbox.truth(101, PROD, DataType.CUSTOMERS).count
        - rig.sandbox.truth(101, PROD, DataType.CUSTOMERS).active
        + rig.sandbox.truth(102, PROD, DataType.CUSTOMERS).count
        - rig.sandbox.truth(102, PROD, DataType.CUSTOMERS).active
    )
    row = await rig.pool.fetchrow(
        "SELECT total, customer_id, payload FROM servicetitan.invoices WHERE tenant_id = 101 LIMIT 1"
    )
    assert row["payload"]["total"] is None or str(row["total"]) == row["payload"]["total"]


async def test_the_next_batch_is_filled_while_one_is_written_and_no_further(
    database_dsn: str, tmp_path: Path
) -> None:
    """Double buffering: while PostgreSQL holds the first batch's write, the next batch downloads
    and converts; then the export waits, so no more than two batches are ever held."""
    config = SandboxConfig(
        tenants=(tenant(103, customers=1000, invoices=10),), export_page_size=50, seed=7
    )
    async with engine_rig(config, database_dsn, tmp_path) as rig:
        cred = await rig.add(103)
        blocker = await asyncpg.connect(database_dsn)
        try:
            held = blocker.transaction()
            await held.start()
            await blocker.execute("LOCK TABLE servicetitan.customers IN SHARE MODE")
            sync = asyncio.create_task(
                rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
            )
            pages, seen = -1, 0
            for _ in range(100):
                await asyncio.sleep(0.25)
                pages, seen = (
                    seen,
                    rig.sandbox.counters(103, PROD).total(kind=EndpointKind.CUSTOMERS_EXPORT),
                )
                if seen and seen == pages:
                    break
            # Batches of 250 records are 5 pages of 50: one held by the lock, one filled.
            assert seen == 10
            assert not sync.done()
            await held.rollback()
        finally:
            await blocker.close()
        result = await sync
        assert result.status is SyncStatus.COMPLETED, result.error_message
        assert result.records_processed == 1000
        await rig.assert_equal_truth(103, DataType.CUSTOMERS)


async def test_a_failed_write_leaves_no_error_of_the_filler_unobserved(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The pages fail while the writer is busy, then the write fails too: the writer's error wins,
    and the filler's is retrieved rather than logged at garbage collection as never retrieved."""

    async def pages() -> AsyncIterator[ExportPage]:
        record = {"id": 1, "active": True, "modifiedOn": "2026-11-30T10:00:00Z"}
        yield ExportPage([record], "token-1", True, 64)
        await asyncio.sleep(0.1)  # after the writer took the page
        raise NetworkError("ServiceTitan went away")

    batches = rig.engine._batches(pages(), DataType.CUSTOMERS, defaultdict(float))
    with pytest.raises(RuntimeError, match="the write failed"):
        async with contextlib.aclosing(batches):
            batch = await anext(batches)  # the one page, handed over as no other comes
            assert len(batch.rows) == 1
            await asyncio.sleep(0.2)  # the filler fails meanwhile
            raise RuntimeError("the write failed")
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_incremental_sync_picks_up_exactly_the_changes(rig: Rig) -> None:
    cred = await rig.add(101)
    first = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert first.status is SyncStatus.COMPLETED
    await rig.sandbox.mutate(101, PROD, DataType.CUSTOMERS, modify=7, deactivate=3, create=5)
    second = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert second.status is SyncStatus.COMPLETED
    assert second.records_processed == 15
    await rig.assert_equal_truth(101, DataType.CUSTOMERS)
    third = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert third.records_processed == 0
    # The cursor remembers the last success, so dry runs never scan the sync log.
    assert third.completed_at == await rig.pool.fetchval(
        "SELECT last_success_at FROM stsync.cursors WHERE credential_id = $1", cred.id
    )


async def test_full_mode_restarts_from_the_beginning(rig: Rig) -> None:
    cred = await rig.add(102)
    await rig.engine.synchronize(SyncRequest(cred, DataType.INVOICES))
    full = await rig.engine.synchronize(SyncRequest(cred, DataType.INVOICES, mode=SyncMode.FULL))
    assert full.status is SyncStatus.COMPLETED
    assert full.records_processed == 200
    await rig.assert_equal_truth(102, DataType.INVOICES)


async def test_cancelled_sync_resumes_to_the_same_final_state(rig: Rig) -> None:
    cred = await rig.add(101)
    rig.sandbox.set_faults(FaultRule(tenant_id=101, latency_ms=40))
    control = SyncControl()
    task = asyncio.create_task(
        rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS), control=control)
    )
    while control.last_progress is None and control.result is None:
        await asyncio.sleep(0.02)
        progress = await rig.pool.fetchval(
            "SELECT records_processed FROM stsync.sync_log WHERE credential_id = $1", cred.id
        )
        if progress:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await rig.pool.fetchrow("SELECT status, records_processed FROM stsync.sync_log")
    assert row["status"] == "cancelled"
    assert 0 < row["records_processed"] < 1200
    stored = await rig.pool.fetchval("SELECT count(*) FROM servicetitan.customers")
    assert stored == row["records_processed"]  # exactly the committed batches, nothing half-done
    rig.sandbox.set_faults()
    resumed = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert resumed.status is SyncStatus.COMPLETED
    assert resumed.records_processed == 1200 - row["records_processed"]
    await rig.assert_equal_truth(101, DataType.CUSTOMERS)


async def test_timeout_ends_timed_out_and_next_sync_resumes(rig: Rig) -> None:
    cred = await rig.add(101)
    rig.sandbox.set_faults(FaultRule(tenant_id=101, latency_ms=60))
    result = await rig.engine.synchronize(
        SyncRequest(cred, DataType.CUSTOMERS, timeout_seconds=0.6)
    )
    assert result.status is SyncStatus.TIMED_OUT
    assert result.error_category is ErrorCategory.TIMEOUT
    assert result.records_processed < 1200
    rig.sandbox.set_faults()
    resumed = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert resumed.status is SyncStatus.COMPLETED
    assert result.records_processed + resumed.records_processed == 1200
    await rig.assert_equal_truth(101, DataType.CUSTOMERS)


async def test_faults_are_absorbed(rig: Rig) -> None:
    cred = await rig.add(101)
    rig.sandbox.set_faults(
        FaultRule(
            tenant_id=101,
            rate_limit_share=0.15,
            server_error_share=0.1,
            maintenance_share=0.05,
            seed=3,
        )
    )
    rig.sandbox.update_settings(token_ttl_seconds=1.0)
    result = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert result.status is SyncStatus.COMPLETED, result.error_message
    await rig.assert_equal_truth(101, DataType.CUSTOMERS)
    counters = rig.sandbox.counters(101, PROD)
    assert counters.total(status=429) + counters.total(status=500) + counters.total(status=409) > 0


async def test_revoked_credential_fails_with_auth_and_is_marked_error(rig: Rig) -> None:
    cred = await rig.add(102)
    rig.sandbox.revoke(cred.client_id)
    result = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert result.status is SyncStatus.FAILED
    assert result.error_category is ErrorCategory.AUTH
    stored = await rig.store.get(cred.id)
    assert stored.status is CredentialStatus.ERROR
    assert stored.last_error and "cs.secret" not in stored.last_error
    row = await rig.pool.fetchrow("SELECT status, error_category FROM stsync.sync_log")
    assert (row["status"], row["error_category"]) == ("failed", "auth")


async def test_same_pair_never_syncs_twice_at_once(rig: Rig) -> None:
    from stsync_daemon.sync.engine import SyncAlreadyRunning

    cred = await rig.add(101)
    rig.sandbox.set_faults(FaultRule(tenant_id=101, latency_ms=30))
    first = asyncio.create_task(rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS)))
    await asyncio.sleep(0.3)
    with pytest.raises(SyncAlreadyRunning):
        await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_orphan_sweep_spares_live_syncs_and_interrupts_dead_ones(rig: Rig) -> None:
    cred = await rig.add(101)
    rig.sandbox.set_faults(FaultRule(tenant_id=101, latency_ms=30))
    live = asyncio.create_task(rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS)))
    await asyncio.sleep(0.3)
    await rig.pool.execute(
        "INSERT INTO stsync.sync_log (id, credential_id, data_type, trigger, mode) "
        "VALUES (gen_random_uuid(), $1, 'invoices', 'scheduled', 'incremental')",
        cred.id,
    )
    swept = await sweep_orphans(rig.pool)
    assert len(swept) == 1
    statuses = dict(await rig.pool.fetch("SELECT data_type, status FROM stsync.sync_log"))
    assert statuses == {"customers": "running", "invoices": "interrupted"}
    live.cancel()
    with pytest.raises(asyncio.CancelledError):
        await live


async def test_token_expiry_mid_sync_is_absorbed(rig: Rig) -> None:
    from stsync_daemon.sandbox import EndpointKind

    cred = await rig.add(101)
    rig.sandbox.update_settings(token_ttl_seconds=1.0)
    rig.sandbox.set_faults(FaultRule(tenant_id=101, latency_ms=250))
    result = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert result.status is SyncStatus.COMPLETED, result.error_message
    assert result.duration_seconds > 2.5  # outlived two tokens
    tokens = rig.sandbox.counters(101, PROD).total(kind=EndpointKind.TOKEN, status=200)
    assert tokens >= 2
    await rig.assert_equal_truth(101, DataType.CUSTOMERS)


async def test_expired_continuation_token_restarts_from_the_committed_date(rig: Rig) -> None:
    cred = await rig.add(102)
    first = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert first.status is SyncStatus.COMPLETED
    await rig.sandbox.mutate(102, PROD, DataType.CUSTOMERS, modify=4)
    rig.sandbox.invalidate_export_tokens(102, PROD, DataType.CUSTOMERS)
    second = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert second.status is SyncStatus.COMPLETED, second.error_message
    assert second.records_processed >= 4
    await rig.assert_equal_truth(102, DataType.CUSTOMERS)


async def test_a_malformed_record_is_dead_lettered_and_the_sync_completes(rig: Rig) -> None:
    cred = await rig.add(102)
    bad = await rig.sandbox.mutate(102, PROD, DataType.INVOICES, corrupt=1)
    [bad_id] = bad.corrupted
    result = await rig.engine.synchronize(SyncRequest(cred, DataType.INVOICES))
    assert result.status is SyncStatus.COMPLETED
    assert (result.records_processed, result.records_failed) == (200, 1)
    assert result.records_successful == 199
    letter = await rig.pool.fetchrow("SELECT * FROM stsync.dead_letters")
    assert letter["record_id"] == str(bad_id) and letter["sync_id"] == result.sync_id
    assert "modifiedOn" in letter["reason"] and letter["payload"]["modifiedOn"] == "not a date"
    row = await rig.pool.fetchrow(
        "SELECT records_failed, status FROM stsync.sync_log WHERE id = $1", result.sync_id
    )
    assert (row["records_failed"], row["status"]) == (1, "completed")
    expected = truth_digest(
        (r["id"], r["modifiedOn"], r["active"])
        for r in rig.sandbox.records(102, PROD, DataType.INVOICES)
        if r["id"] != bad_id
    )
    async with rig.pool.acquire() as conn:
        assert await db_truth(conn, DataType.INVOICES, PROD, 102) == (199, expected)


async def test_no_advisory_lock_outlives_its_sync(rig: Rig) -> None:
    """The pool releases connections without a reset query: each sync must unlock by itself."""
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
    cred = await rig.add(102)
    await rig.sync(cred, DataType.CUSTOMERS)
    rig.sandbox.set_faults(FaultRule(tenant_id=102, latency_ms=500))
    slow = asyncio.create_task(rig.engine.synchronize(SyncRequest(cred, DataType.INVOICES)))
    await asyncio.sleep(0.3)
    assert await rig.pool.fetchval(held) == 1
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    rig.sandbox.set_faults()
    rig.sandbox.revoke(cred.client_id)
    failed = await rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS))
    assert failed.status is SyncStatus.FAILED
    assert await rig.pool.fetchval(held) == 0


async def test_first_load_meeting_a_record_twice_merges_it_once(rig: Rig) -> None:
    """A record changed during a first load comes again later: its batch falls back to the merge."""
    cred = await rig.add(101)
    rig.sandbox.set_faults(FaultRule(tenant_id=101, latency_ms=60))
    sync = asyncio.create_task(rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS)))
    stored = "SELECT count(*) FROM servicetitan.customers WHERE tenant_id = 101"
    for _ in range(200):
        if await rig.pool.fetchval(stored):
            break
        await asyncio.sleep(0.02)
    first = await rig.pool.fetchval(
        "SELECT min(id) FROM servicetitan.customers WHERE tenant_id = 101"
    )
    rig.sandbox.state.tenant(101, PROD).datasets[DataType.CUSTOMERS].touch(first)
    result = await sync
    assert result.status is SyncStatus.COMPLETED, result.error_message
    assert result.records_processed == 1201  # the touched record was exported twice
    await rig.assert_equal_truth(101, DataType.CUSTOMERS)


async def test_a_slow_api_gets_each_page_written_while_the_next_downloads(rig: Rig) -> None:
    """Progress is committed (and resumable) as pages arrive, not only when a batch fills."""
    cred = await rig.add(102)
    rig.sandbox.set_faults(FaultRule(tenant_id=102, latency_ms=400))
    sync = asyncio.create_task(rig.engine.synchronize(SyncRequest(cred, DataType.CUSTOMERS)))
    # The size count (is it large enough for a backfill?) at 0.4 s, then page 1 (100 records) at
    # 0.8 s; page 2 is on its way.
    await asyncio.sleep(1.05)
    stored = await rig.pool.fetchval(
        "SELECT count(*) FROM servicetitan.customers WHERE tenant_id = 102"
    )
    assert stored == 100 and not sync.done()
    result = await sync
    assert result.status is SyncStatus.COMPLETED and result.records_processed == 300
    await rig.assert_equal_truth(102, DataType.CUSTOMERS)
