"""Retention and the status totals: old history goes in small batches, what stays is summed up
exactly as a scan of the sync log would, and a daemon prunes by itself. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stsync_daemon.config import RetentionConfig
from stsync_daemon.daemon.retention import Retention
from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.sandbox import Sandbox, SandboxConfig
from stsync_daemon.store import syncs as sync_log
from stsync_daemon.store.db import create_pool
from stsync_daemon.store.runs import RunStore
from stsync_daemon.store.syncs import SyncStore, sweep_orphans
from tests.support import daemon_settings, tenant, write_key

ACME, BOLT = uuid.uuid4(), uuid.uuid4()
NOW = datetime.now(UTC)
DAY = timedelta(days=1)


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_dsn, min_size=1, max_size=3)
    try:
        await pool.execute(
            "INSERT INTO stsync.companies (id, name) VALUES ('1', 'Acme'), ('2', 'Bolt')"
        )
        await pool.executemany(
            "INSERT INTO stsync.credentials (id, company_id, environment, tenant_id, client_id, "
            "client_secret_encrypted) VALUES ($1, $2, 'production', $3, 'cid', 'x')",
            [(ACME, "1", 1), (BOLT, "2", 2)],
        )
        yield pool
    finally:
        await pool.close()


async def add_sync(
    pool: asyncpg.Pool,
    credential: uuid.UUID,
    age_days: float,
    status: str | None,
    records: int = 10,
    run_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A sync started `age_days` ago, ended (through the real end statement) unless status is None."""
    sync_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO stsync.sync_log (id, run_id, credential_id, data_type, trigger, mode, "
        "started_from, started_at, records_processed, records_failed) "
        "VALUES ($1, $2, $3, 'customers', 'manual', 'incremental', 'token', $4, $5, 1)",
        sync_id,
        run_id,
        credential,
        NOW - timedelta(days=age_days),
        records,
    )
    if status is not None:
        await sync_log.finish(
            pool,
            sync_id,
            status=status,
            category="api" if status == "failed" else None,
            message="boom" if status == "failed" else None,
            full_pass_started_at=None,
            credential_outcome=None,
        )
    return sync_id


async def summaries(
    pool: asyncpg.Pool, company_id: str | None = None, **filters: Any
) -> tuple[Any, Any]:
    """The status summary from the totals, and from a scan of the whole log."""
    store = SyncStore(pool)
    args = {"running_only": False, "failed_only": False, **filters}
    _, totals = await store.status(company_id=company_id, since=None, limit=1, **args)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    _, scanned = await store.status(company_id=company_id, since=epoch, limit=1, **args)
    return totals, scanned


async def test_totals_sum_up_the_log_as_a_scan_would(pool: asyncpg.Pool) -> None:
    for i, status in enumerate(["completed", "completed", "failed", "timed_out", None]):
        await add_sync(pool, ACME, age_days=i, status=status, records=10 * (i + 1))
    await add_sync(pool, BOLT, age_days=1, status="completed", records=7)
    running = await add_sync(pool, BOLT, age_days=0, status=None)
    totals, scanned = await summaries(pool)
    assert totals == scanned
    assert totals["total_syncs"] == 7 and totals["by_status"]["running"] == 2  # type: ignore[index]
    for filters in (
        {"company_id": "2"},
        {"failed_only": True},
        {"running_only": True},
        {"environment": "production", "data_type": "customers"},
        {"environment": "integration"},
        {"data_type": "invoices"},
    ):
        totals, scanned = await summaries(pool, **filters)
        assert totals == scanned, filters
    # A sync swept as interrupted is counted as such.
    await sweep_orphans(pool)
    totals, scanned = await summaries(pool)
    assert totals == scanned and totals["by_status"]["interrupted"] == 2  # type: ignore[index]
    assert running  # swept above: nobody held its lock
    # Counters of running syncs move batch by batch without calling the trigger; a finished row
    # edited by hand moves the totals.
    await pool.execute("UPDATE stsync.sync_log SET records_processed = records_processed + 5")
    await pool.execute("UPDATE stsync.sync_log SET status = 'failed' WHERE status = 'completed'")
    totals, scanned = await summaries(pool)
    assert totals == scanned and totals["by_status"]["failed"] == 4
    # Whoever writes the log, the totals follow: an operator's DELETE, a credential removed with
    # its history (the cascade takes its totals along).
    await pool.execute("DELETE FROM stsync.sync_log WHERE status = 'timed_out'")
    await pool.execute("DELETE FROM stsync.credentials WHERE id = $1", BOLT)
    totals, scanned = await summaries(pool)
    assert totals == scanned and totals["total_syncs"] == 4


async def test_a_pass_prunes_old_history_in_batches_and_keeps_the_rest(pool: asyncpg.Pool) -> None:
    runs = RunStore(pool, "here")
    old_run, new_run = uuid.uuid4(), uuid.uuid4()
    for run_id, age in ((old_run, 40), (new_run, 1)):
        await pool.execute(
            "INSERT INTO stsync.runs (id, action, trigger, instance, status, started_at) "
            "VALUES ($1, 'process', 'manual', 'here', 'completed', $2)",
            run_id,
            NOW - age * DAY,
        )
    old = [await add_sync(pool, ACME, 100 + i / 10, "completed", run_id=old_run) for i in range(23)]
    kept = [await add_sync(pool, ACME, 5, "failed", run_id=old_run) for _ in range(3)]
    stuck = await add_sync(pool, BOLT, 200, None)  # still running: never pruned
    await pool.execute(
        "INSERT INTO stsync.dead_letters (credential_id, environment, tenant_id, data_type, "
        "record_id, reason, raw, created_at, resolved_at) VALUES "
        "($1, 'production', 1, 'customers', '1', 'r', 'x', $2, $2), "  # resolved long ago: goes
        "($1, 'production', 1, 'customers', '2', 'r', 'x', $2, NULL), "  # open: stays
        "($1, 'production', 1, 'customers', '3', 'r', 'x', $3, $3)",  # resolved lately: stays
        ACME,
        NOW - 200 * DAY,
        NOW - DAY,
    )
    retention = Retention(RetentionConfig(batch_size=7), SyncStore(pool), runs)
    assert await retention.prune_once() == {"sync_log": 23, "runs": 1, "dead_letters": 1}
    left = {r["id"] for r in await pool.fetch("SELECT id FROM stsync.sync_log")}
    assert left == {*kept, stuck} and not left & set(old)
    assert [r["id"] for r in await pool.fetch("SELECT id FROM stsync.runs")] == [new_run]
    # The kept syncs of the pruned run stay, no longer tied to it.
    assert await pool.fetchval("SELECT count(*) FROM stsync.sync_log WHERE run_id IS NULL") == 4
    assert sorted(
        r["record_id"] for r in await pool.fetch("SELECT record_id FROM stsync.dead_letters")
    ) == ["2", "3"]
    totals, scanned = await summaries(pool)
    assert totals == scanned and totals["total_syncs"] == 4  # type: ignore[index]
    assert await retention.prune_once() == {}
    # 0 days keeps forever.
    forever = RetentionConfig(sync_log_days=0, runs_days=0, dead_letters_days=0)
    everything = NOW + 1000 * DAY
    assert await Retention(forever, SyncStore(pool), runs).prune_once(everything) == {}


async def test_an_outage_ends_the_pass_quietly(database_dsn: str) -> None:
    pool = await create_pool(database_dsn, min_size=1, max_size=1)
    await pool.close()
    retention = Retention(RetentionConfig(), SyncStore(pool), RunStore(pool, "here"))
    assert await retention.prune_once() == {}


async def test_the_daemon_prunes_by_itself(database_dsn: str, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    spec = tenant(221, customers=10, invoices=10)
    async with Sandbox(SandboxConfig(tenants=(spec,), seed=3)) as sandbox:
        settings = daemon_settings(
            sandbox,
            database_dsn,
            write_key(tmp_path),
            retention={"sync_log_days": 30, "interval_seconds": 0.2},
        )
        pool = await create_pool(database_dsn, min_size=1, max_size=2)
        try:
            await pool.execute("INSERT INTO stsync.companies (id, name) VALUES ('1', 'Acme')")
            await pool.execute(
                "INSERT INTO stsync.credentials (id, company_id, environment, tenant_id, "
                "client_id, client_secret_encrypted) VALUES ($1, '1', 'production', 1, 'c', 'x')",
                ACME,
            )
            old = await add_sync(pool, ACME, 31, "completed")
            recent = await add_sync(pool, ACME, 29, "completed")
            daemon = await DaemonProcess(tmp_path, settings).start()
            try:
                gone = "SELECT NOT EXISTS (SELECT 1 FROM stsync.sync_log WHERE id = $1)"
                async with asyncio.timeout(20):
                    while True:
                        if await pool.fetchval(gone, old):
                            break
                        await asyncio.sleep(0.1)
                status, body = await daemon.request("GET", "/v1/status")
                assert status == 200 and [s["id"] for s in body["syncs"]] == [str(recent)]
                assert body["summary"]["total_syncs"] == 1
                assert any(e.get("event") == "retention.pruned" for e in daemon.events())
            finally:
                await daemon.stop()
        finally:
            await pool.close()
