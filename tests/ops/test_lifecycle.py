"""The process life cycle under aiorun: SIGTERM drains within the grace period, a second signal
cuts the drain short, and the runs end `interrupted` with the exit status 0 systemd expects."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from stsync_daemon.sandbox import FaultRule, Sandbox, SandboxConfig
from tests.daemon.test_e2e import TENANTS, add_all, start_daemon


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(tenants=TENANTS, export_page_size=50, seed=5)) as sb:
        yield sb


async def test_a_second_signal_cuts_the_grace_period_short(
    sandbox: Sandbox, database_dsn: str, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    daemon = await start_daemon(
        sandbox, database_dsn, tmp_path, sync={"shutdown_grace_seconds": 120}
    )
    await add_all(daemon)
    sandbox.set_faults(FaultRule(latency_ms=1500))
    run = asyncio.create_task(daemon.request("POST", "/v1/process", {"max_concurrent": 6}))
    conn = await asyncpg.connect(database_dsn)
    try:
        for _ in range(300):
            if await conn.fetchval(
                "SELECT count(*) FROM stsync.sync_log WHERE records_processed > 0"
            ):
                break
            await asyncio.sleep(0.05)
        daemon.signal(signal.SIGTERM)
        for _ in range(100):
            if any(e.get("event") == "daemon.draining" for e in daemon.events()):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        assert daemon.proc is not None and daemon.proc.poll() is None  # still draining
        loop = asyncio.get_running_loop()
        second = loop.time()
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(kill_after_seconds=30) == 0
        assert loop.time() - second < 15  # not the 120 s grace
        _status, events = await run
        assert events[-1]["summary"]["status"] == "interrupted"
        statuses = {r["status"] for r in await conn.fetch("SELECT status FROM stsync.sync_log")}
        assert "running" not in statuses and "interrupted" in statuses
        names = [e["event"] for e in daemon.events()]
        assert names.count("daemon.signal") == 2
        assert names.index("daemon.draining") < names.index("daemon.stopped")
        # Nothing left for aiorun's own shutdown to cancel or complain about; no stray task errors.
        assert not [e for e in daemon.events() if e["logger"] in ("aiorun", "asyncio")]
    finally:
        sandbox.set_faults()
        await conn.close()
        await daemon.stop()
