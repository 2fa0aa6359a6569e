"""Daemon-wide configuration errors (a wrong app key, a wrong secrets key) park no tenant: syncs fail
as `configuration`, credentials stay as they are, health says degraded and why, and once the operator
fixes the configuration and restarts, every tenant syncs again. Also: dead letters in a metric."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import PoisonKind, Sandbox, SandboxConfig
from stsync_daemon.store.crypto import generate_key
from tests.support import credential_body, daemon_settings, tenant, write_key

PROD = Environment.PRODUCTION
SPECS = (tenant(91, customers=120, invoices=40), tenant(92, customers=80, invoices=30))


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(tenants=SPECS, export_page_size=50, seed=2)) as sb:
        yield sb


async def credentials(daemon: DaemonProcess) -> dict[str, str]:
    status, body = await daemon.request("GET", "/v1/credentials")
    assert status == 200, body
    return {c["tenant_id"]: c["status"] for c in body["credentials"]}


async def test_a_wrong_app_key_is_the_daemons_problem_until_fixed_and_restarted(
    sandbox: Sandbox, database_dsn: str, tmp_path: Path
) -> None:
    os.chmod(tmp_path, 0o755)
    key = write_key(tmp_path)
    good = daemon_settings(sandbox, database_dsn, key)
    wrong: dict[str, Any] = {
        **good,
        "servicetitan": {**good["servicetitan"], "app_key": "ak1.not-ours"},
    }
    daemon = await DaemonProcess(tmp_path, wrong).start()
    try:
        for spec in SPECS:
            status, body = await daemon.request("POST", "/v1/credentials", credential_body(spec))
            assert status == 201, body
        summary = await daemon.run("/v1/process", {})
        assert summary["failed_syncs"] == 4
        assert {s["error_category"] for s in summary["syncs"]} == {"configuration"}
        assert await credentials(daemon) == {91: "active", 92: "active"}
        status, health = await daemon.request("GET", "/v1/health")
        assert health["status"] == "degraded"
        assert any("app key" in p for p in health["problems"]), health
        assert "ak1.not-ours" not in str(health) and "ak1.not-ours" not in daemon.log.read_text()
    finally:
        await daemon.stop()
    daemon = await DaemonProcess(tmp_path, good).start()  # fixed, and restarted
    try:
        status, health = await daemon.request("GET", "/v1/health")
        assert health["status"] == "ok", health
        summary = await daemon.run("/v1/process", {})
        assert (summary["successful_syncs"], summary["failed_syncs"]) == (4, 0)
    finally:
        await daemon.stop()


async def test_a_wrong_secrets_key_parks_no_credential(
    sandbox: Sandbox, database_dsn: str, tmp_path: Path
) -> None:
    os.chmod(tmp_path, 0o755)
    key = write_key(tmp_path)
    good = daemon_settings(sandbox, database_dsn, key)
    daemon = await DaemonProcess(tmp_path, good).start()
    try:
        for spec in SPECS:
            status, _ = await daemon.request("POST", "/v1/credentials", credential_body(spec))
            assert status == 201
    finally:
        await daemon.stop()
    other = tmp_path / "other.key"
    other.write_text(generate_key())
    other.chmod(0o600)
    daemon = await DaemonProcess(tmp_path, {**good, "secrets": {"key_file": str(other)}}).start()
    try:
        summary = await daemon.run("/v1/process", {})
        assert {s["error_category"] for s in summary["syncs"]} == {"configuration"}
        assert await credentials(daemon) == {91: "active", 92: "active"}
        status, health = await daemon.request("GET", "/v1/health")
        assert health["status"] == "degraded"
        assert any("cannot be decrypted" in p for p in health["problems"]), health
    finally:
        await daemon.stop()
    daemon = await DaemonProcess(tmp_path, good).start()
    try:
        summary = await daemon.run("/v1/process", {})
        assert summary["failed_syncs"] == 0, summary
    finally:
        await daemon.stop()


async def test_open_dead_letters_are_counted_in_status_and_a_metric(
    sandbox: Sandbox, database_dsn: str, tmp_path: Path
) -> None:
    os.chmod(tmp_path, 0o755)
    settings = daemon_settings(
        sandbox, database_dsn, write_key(tmp_path), cluster={"orphan_sweep_seconds": 0.5}
    )
    daemon = await DaemonProcess(tmp_path, settings).start()
    try:
        status, _ = await daemon.request("POST", "/v1/credentials", credential_body(SPECS[0]))
        assert status == 201
        await sandbox.mutate(91, PROD, DataType.INVOICES, poison=3, poison_kind=PoisonKind.NUL)
        summary = await daemon.run("/v1/process", {})
        assert summary["failed_syncs"] == 0
        status, body = await daemon.request("GET", "/v1/status")
        assert body["summary"]["dead_letters"] == 3
        address = next(e["metrics"] for e in daemon.events() if e.get("event") == "daemon.ready")
        line = 'stsync_dead_letters{data_type="invoices",environment="production"} 3.0'
        for _ in range(50):
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{address}/metrics") as resp,
            ):
                text = await resp.text()
            if line in text:
                break
            await asyncio.sleep(0.2)
        assert line in text
    finally:
        await daemon.stop()
