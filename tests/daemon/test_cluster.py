"""Three daemons on one PostgreSQL behave as one service: each tick once, work spread, failover."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import FaultRule, Sandbox, SandboxConfig
from tests.support import (
    credential_body,
    daemon_settings,
    db_truth,
    tenant,
    write_key,
)

TENANTS = tuple(tenant(300 + i, customers=60, invoices=40) for i in range(20))
PAIRS = len(TENANTS) * 2


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(tenants=TENANTS, export_page_size=100, seed=5, mutations_per_second=5)
    async with Sandbox(config) as sb:
        yield sb


async def wait_for(
    conn: asyncpg.Connection, sql: str, predicate: object, seconds: float, *args: object
) -> object:
    deadline = asyncio.get_running_loop().time() + seconds
    value = None
    while asyncio.get_running_loop().time() < deadline:
        value = await conn.fetchval(sql, *args)
        if predicate(value):  # type: ignore[operator]
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting: {sql} -> {value}")


@pytest.mark.timeout(360)
async def test_three_instances_run_each_tick_once_spread_work_and_fail_over(
    sandbox: Sandbox, database_dsn: str, tmp_path: Path
) -> None:
    os.chmod(tmp_path, 0o755)
    key = write_key(tmp_path)
    daemons = []
    for name in ("node-a", "node-b", "node-c"):
        workdir = tmp_path / name
        workdir.mkdir()
        settings = daemon_settings(
            sandbox,
            database_dsn,
            key,
            cluster={"instance": name, "orphan_sweep_seconds": 1, "lease_seconds": 5},
            sync={"max_concurrent": 4},
            schedules=[{"name": "every-2s", "cron": "*/2 * * * * *", "max_concurrent": 4}],
        )
        daemons.append(DaemonProcess(workdir, settings))
    await daemons[0].start()
    for spec in TENANTS:
        status, body = await daemons[0].request("POST", "/v1/credentials", credential_body(spec))
        assert status == 201, body
    await asyncio.gather(daemons[1].start(), daemons[2].start())
    conn = await asyncpg.connect(database_dsn)
    try:
        # Ticks from before every credential was registered prove nothing: count from here.
        all_up = await conn.fetchval("SELECT now()")
        # At least 10 ticks run to completion with all three instances up.
        await wait_for(
            conn,
            "SELECT count(*) FROM stsync.runs WHERE schedule_name = 'every-2s' AND status = 'completed' "
            "AND started_at > $1",
            lambda n: n >= 10,
            180,
            all_up,
        )
        runs = await conn.fetch(
            "SELECT id, scheduled_for FROM stsync.runs WHERE schedule_name = 'every-2s' "
            "AND status = 'completed' AND started_at > $1 ORDER BY scheduled_for",
            all_up,
        )
        # Each tick is one run: fire times are unique.
        assert len({r["scheduled_for"] for r in runs}) == len(runs)
        for run in runs:
            pairs = await conn.fetch(
                "SELECT credential_id, data_type, count(*) AS n, bool_and(status = 'completed') AS ok "
                "FROM stsync.sync_log WHERE run_id = $1 GROUP BY 1, 2",
                run["id"],
            )
            assert len(pairs) == PAIRS and all(p["n"] == 1 and p["ok"] for p in pairs), run
        # No two syncs of the same (credential, data type) ever overlap in time.
        overlaps = await conn.fetchval(
            "SELECT count(*) FROM stsync.sync_log a JOIN stsync.sync_log b "
            "ON a.credential_id = b.credential_id AND a.data_type = b.data_type AND a.id < b.id "
            "AND a.started_at < coalesce(b.completed_at, now()) "
            "AND b.started_at < coalesce(a.completed_at, now())"
        )
        assert overlaps == 0
        spread = dict(
            await conn.fetch(
                "SELECT instance, count(*) FROM stsync.sync_log WHERE run_id = ANY($1::uuid[]) GROUP BY 1",
                [r["id"] for r in runs],
            )
        )
        assert set(spread) == {"node-a", "node-b", "node-c"}, spread
        # Any instance shows the cluster-wide view.
        status, body = await daemons[2].request("GET", "/v1/status?limit=5")
        assert status == 200 and {s["instance"] for s in body["syncs"]} <= {
            "node-a",
            "node-b",
            "node-c",
        }

        # Failover: slow pages, then SIGKILL one instance while it runs syncs.
        sandbox.set_faults(FaultRule(latency_ms=400))
        victim = await wait_for(
            conn,
            "SELECT instance FROM stsync.sync_log WHERE status = 'running' AND records_processed = 0 "
            "AND instance <> 'node-a' LIMIT 1",
            lambda v: v is not None,
            60,
        )
        dead = next(d for d in daemons if d.config.parent.name == victim)
        killed_at = await conn.fetchval("SELECT now()")
        dead.signal(signal.SIGKILL)
        assert await dead.wait() == -9
        survivors = [d for d in daemons if d is not dead]
        # The dead instance's syncs end interrupted within the sweep bound.
        await wait_for(
            conn,
            "SELECT count(*) FROM stsync.sync_log WHERE instance = $1 AND status = 'running'",
            lambda n: n == 0,
            30,
            victim,
        )
        interrupted = await conn.fetchval(
            "SELECT count(*) FROM stsync.sync_log WHERE instance = $1 AND status = 'interrupted' "
            "AND started_at <= $2",
            victim,
            killed_at,
        )
        assert interrupted >= 1
        # The survivors finish the run that was going on, whoever owned it.
        await wait_for(
            conn,
            "SELECT count(*) FROM stsync.runs WHERE status = 'running' AND started_at <= $1",
            lambda n: n == 0,
            60,
            killed_at,
        )
        # The next tick brings every tenant's data to the sandbox's truth.
        sandbox.set_faults()
        sandbox.update_settings(mutations_per_second=0)
        settled_at = await conn.fetchval("SELECT now()")
        await wait_for(
            conn,
            "SELECT count(*) FROM stsync.runs WHERE schedule_name = 'every-2s' AND status = 'completed' "
            "AND started_at > $1",
            lambda n: n >= 1,
            60,
            settled_at,
        )
        for spec, data_type in itertools.product(TENANTS, DataType):
            truth = sandbox.truth(spec.tenant_id, Environment.PRODUCTION, data_type)
            assert await db_truth(conn, data_type, Environment.PRODUCTION, spec.tenant_id) == (
                truth.count,
                truth.digest,
            )
        status, health = await survivors[0].request("GET", "/v1/health")
        assert health["instance"] in {"node-a", "node-b", "node-c"}
        # One view: every instance with its heartbeat; the dead one is no longer alive.
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            status, body = await survivors[0].request("GET", "/v1/status?limit=1")
            alive = {i["name"]: i["alive"] for i in body["instances"]}
            if alive.get(victim) is False or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
        assert alive == {name: name != victim for name in ("node-a", "node-b", "node-c")}
        assert status == 200
    finally:
        await conn.close()
        await asyncio.gather(*(d.stop() for d in daemons if d.proc is not None))
