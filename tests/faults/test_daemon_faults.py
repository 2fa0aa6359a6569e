"""The real daemon, killed and starved: kill -9 at random instants of a long sync, and PostgreSQL
restarting in the middle of a scheduled run. After each fault ends the daemon gets back to full
work by itself, and the tenants equal the sandbox's truth."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.embedded.postgres import PrivateCluster
from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import EndpointKind, FaultRule, Sandbox, SandboxConfig
from tests.support import credential_body, daemon_settings, db_truth, tenant, write_key

PROD = Environment.PRODUCTION


async def assert_truth(sandbox: Sandbox, dsn: str, tenant_ids: tuple[int, ...]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for tid in tenant_ids:
            for dt in DataType:
                truth = sandbox.truth(tid, PROD, dt)
                assert await db_truth(conn, dt, PROD, tid) == (truth.count, truth.digest), (tid, dt)
    finally:
        await conn.close()


async def nothing_running(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        syncs = await conn.fetchval("SELECT count(*) FROM stsync.sync_log WHERE status = 'running'")
        runs = await conn.fetchval("SELECT count(*) FROM stsync.runs WHERE status = 'running'")
        return syncs, runs
    finally:
        await conn.close()


@pytest.mark.timeout(240)
async def test_kill_9_at_random_instants_of_a_long_sync_loses_and_repeats_nothing(
    database_dsn: str, tmp_path: Path
) -> None:
    os.chmod(tmp_path, 0o755)
    spec = tenant(71, customers=4000, invoices=300)
    config = SandboxConfig(tenants=(spec,), export_page_size=100, seed=9)
    async with Sandbox(config) as sandbox:
        sandbox.set_faults(FaultRule(tenant_id=71, data_type=DataType.CUSTOMERS, latency_ms=120))
        settings = daemon_settings(sandbox, database_dsn, write_key(tmp_path))
        rng = random.Random(20261201)
        kills = 0
        daemon = await DaemonProcess(tmp_path, settings).start()
        status, _ = await daemon.request("POST", "/v1/credentials", credential_body(spec))
        assert status == 201
        try:
            while kills < 5:
                request = asyncio.create_task(daemon.request("POST", "/v1/process", {}))
                await asyncio.sleep(rng.uniform(0.6, 2.0))
                daemon.signal(signal.SIGKILL)
                await daemon.wait()
                kills += 1
                with contextlib.suppress(Exception):
                    await request  # the stream died with the daemon
                daemon = await DaemonProcess(tmp_path, None).start()
            summary = await daemon.run("/v1/process", {})
            assert summary["failed_syncs"] == 0, summary
        finally:
            await daemon.stop()
        await assert_truth(sandbox, database_dsn, (71,))
        assert await nothing_running(database_dsn) == (0, 0)
        pages = -(-4000 // 100)  # one full export of the customers
        requests = sandbox.counters(71, PROD).total(kind=EndpointKind.CUSTOMERS_EXPORT, status=200)
        # Each restart resumes from the last committed page: at most the page in flight is asked
        # again, never a whole export per restart.
        assert requests <= pages + 3 * kills, (requests, pages, kills)


@pytest.mark.timeout(240)
async def test_kill_9_in_the_middle_of_a_backfill_resumes_with_the_pages_not_committed(
    database_dsn: str, tmp_path: Path
) -> None:
    os.chmod(tmp_path, 0o755)
    spec = tenant(72, customers=6000, invoices=300)
    config = SandboxConfig(tenants=(spec,), export_page_size=100, seed=9)
    async with Sandbox(config) as sandbox:
        sandbox.set_faults(FaultRule(endpoint=EndpointKind.CUSTOMERS_LIST, latency_ms=150))
        backfill = {"backfill_min_records": 1000, "backfill_page_size": 200}
        settings = daemon_settings(
            sandbox, database_dsn, write_key(tmp_path), sync={**backfill, "backfill_concurrency": 2}
        )
        daemon = await DaemonProcess(tmp_path, settings).start()
        status, _ = await daemon.request("POST", "/v1/credentials", credential_body(spec))
        assert status == 201
        conn = await asyncpg.connect(database_dsn)
        try:
            request = asyncio.create_task(daemon.request("POST", "/v1/process", {}))
            done = 0
            async with asyncio.timeout(60):
                while done < 8:
                    await asyncio.sleep(0.05)
                    done = await conn.fetchval(
                        "SELECT coalesce(max(cardinality(backfill_done)), 0) FROM stsync.cursors "
                        "WHERE data_type = 'customers'"
                    )
            daemon.signal(signal.SIGKILL)
            await daemon.wait()
            with contextlib.suppress(Exception):
                await request  # the stream died with the daemon
            kept = await conn.fetchval(
                "SELECT cardinality(backfill_done) FROM stsync.cursors WHERE data_type = 'customers'"
            )
            assert 8 <= kept < 30
        finally:
            await conn.close()
        sandbox.set_faults()
        await asyncio.sleep(0.5)  # requests in flight at the kill still finish on the server
        before = sandbox.counters(72, PROD).total(kind=EndpointKind.CUSTOMERS_LIST, status=200)
        daemon = await DaemonProcess(tmp_path, None).start()
        try:
            summary = await daemon.run("/v1/process", {})
            assert summary["failed_syncs"] == 0, summary
        finally:
            await daemon.stop()
        await assert_truth(sandbox, database_dsn, (72,))
        assert await nothing_running(database_dsn) == (0, 0)
        after = sandbox.counters(72, PROD).total(kind=EndpointKind.CUSTOMERS_LIST, status=200)
        # No new count: only the 30 pages of 200 minus those committed before the kill.
        assert after - before == 30 - kept, (before, after, kept)


@pytest.fixture
async def three_tenants() -> AsyncIterator[Sandbox]:
    specs = tuple(tenant(80 + i, customers=900, invoices=300) for i in range(3))
    async with Sandbox(SandboxConfig(tenants=specs, export_page_size=100, seed=4)) as sandbox:
        yield sandbox


@pytest.mark.timeout(240)
async def test_postgresql_restarting_mid_scheduled_run_then_schedules_alone_reach_the_truth(
    own_cluster: PrivateCluster, three_tenants: Sandbox, tmp_path: Path
) -> None:
    os.chmod(tmp_path, 0o755)
    dsn = own_cluster.dsn()
    sandbox = three_tenants
    sandbox.set_faults(FaultRule(latency_ms=100))
    settings = daemon_settings(
        sandbox,
        dsn,
        write_key(tmp_path),
        cluster={"orphan_sweep_seconds": 1},
        schedules=[{"name": "often", "cron": "*/3 * * * * *", "max_concurrent": 2}],
    )
    daemon = await DaemonProcess(tmp_path, settings).start()
    try:
        for spec in sandbox.config.tenants:
            status, body = await daemon.request("POST", "/v1/credentials", credential_body(spec))
            assert status == 201, body
        # Wait until a scheduled run is syncing, then take PostgreSQL away for a few seconds.
        for _ in range(300):
            conn = await asyncpg.connect(dsn)
            busy = await conn.fetchval(
                "SELECT count(*) FROM stsync.sync_log WHERE status = 'running' AND records_processed > 0"
            )
            await conn.close()
            if busy:
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(own_cluster.stop)
        await asyncio.sleep(1.5)
        status, health = await daemon.request("GET", "/v1/health")
        assert (
            status == 200 and health["status"] == "degraded" and health["database"] == "unavailable"
        )
        await asyncio.sleep(3)
        await asyncio.to_thread(own_cluster.start)
        sandbox.set_faults()
        await sandbox.mutate(80, PROD, DataType.CUSTOMERS, modify=5, create=2)
        # No operator: the schedule alone must bring every tenant to the truth.
        deadline = asyncio.get_running_loop().time() + 120
        while True:
            try:
                await assert_truth(sandbox, dsn, (80, 81, 82))
                break
            except AssertionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(1)
        for _ in range(100):
            status, health = await daemon.request("GET", "/v1/health")
            if health["status"] == "ok":
                break
            await asyncio.sleep(0.2)
        assert health["status"] == "ok", health
        assert daemon.poll() is None
    finally:
        await daemon.stop()
    assert await nothing_running(dsn) == (0, 0)
    events = [e.get("event") for e in daemon.events()]
    assert "database.unavailable" in events and "database.available" in events
