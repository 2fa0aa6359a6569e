"""PostgreSQL going away: the daemon stays up, answers 503, and works again once it is back."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.embedded.postgres import PrivateCluster
from stsync_daemon.sandbox import Sandbox, SandboxConfig
from tests.support import credential_body, daemon_settings, tenant, write_key

SPEC = tenant(401, customers=300, invoices=100)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(tenants=(SPEC,), export_page_size=100)) as sb:
        yield sb


async def test_daemon_survives_a_database_outage(
    own_cluster: PrivateCluster, sandbox: Sandbox, tmp_path: Path
) -> None:
    os.chmod(tmp_path, 0o755)
    dsn = own_cluster.dsn()
    daemon = await DaemonProcess(
        tmp_path,
        daemon_settings(sandbox, dsn, write_key(tmp_path), cluster={"orphan_sweep_seconds": 1}),
    ).start()
    try:
        status, body = await daemon.request("POST", "/v1/credentials", credential_body(SPEC))
        assert status == 201, body
        await asyncio.to_thread(own_cluster.stop)
        status, health = await daemon.request("GET", "/v1/health")
        assert status == 200 and health["database"] == "unavailable"
        status, body = await daemon.request("POST", "/v1/process", {})
        assert status == 503 and "database" in body["message"]
        await asyncio.sleep(2)  # housekeeping fails meanwhile, and must not kill the daemon
        assert daemon.poll() is None
        await asyncio.to_thread(own_cluster.start)
        for _ in range(50):
            status, health = await daemon.request("GET", "/v1/health")
            if health["database"] == "ok":
                break
            await asyncio.sleep(0.2)
        summary = await daemon.run("/v1/process", {})
        assert summary["successful_syncs"] == 2, summary
        assert summary["total_records_processed"] == 400
    finally:
        await daemon.stop()
