"""Upgrades of a long-lived install: migration status, a schema newer than the code, start-up
timeouts under systemd while migrating."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.sandbox import Sandbox, SandboxConfig
from stsync_daemon.store.migrate import _MIGRATION_LOCK_KEY, available, migrate_keeping_alive
from tests.support import daemon_settings, write_key
from tests.test_stsyncd import stsyncd

LATEST = available()[-1]


def _config(tmp_path: Path, dsn: str) -> str:
    config = tmp_path / "stsync.toml"
    config.write_text(f'[database]\ndsn = "{dsn}"\n')
    return str(config)


async def test_migrate_status_shows_pending_then_applied(
    tmp_path: Path, empty_database_dsn: str
) -> None:
    config = _config(tmp_path, empty_database_dsn)
    out = stsyncd("migrate", "--status", "--config", config)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "NAME", "STATE", "APPLIED_AT"]
    assert lines[1].split() == ["0001", "initial", "pending", "-"]
    assert lines[-1] == f"0 applied, {len(available())} pending"
    # --status changes nothing, not even the version table.
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        assert not await conn.fetchval("SELECT to_regclass('stsync.schema_version') IS NOT NULL")
    finally:
        await conn.close()

    assert stsyncd("migrate", "--config", config).returncode == 0
    out = stsyncd("migrate", "--status", "--config", config)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith(f"{LATEST.version:04d}"))
    assert row.split()[:3] == [f"{LATEST.version:04d}", LATEST.name, "applied"]
    assert out.stdout.splitlines()[-1] == f"{len(available())} applied, 0 pending"


async def test_a_schema_newer_than_the_code_is_refused(tmp_path: Path, database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute(
            "INSERT INTO stsync.schema_version (version, name) VALUES (9001, 'from_the_future')"
        )
    finally:
        await conn.close()
    config = _config(tmp_path, database_dsn)
    for command in (["migrate"], ["run"]):
        out = stsyncd(*command, "--config", config)
        assert out.returncode == 1, (command, out)
        errors = [line for line in out.stderr.splitlines() if line.startswith("stsyncd: ")]
        assert len(errors) == 1, out.stderr
        assert "9001_from_the_future" in errors[0] and f"{LATEST.version:04d}" in errors[0]
        assert "Traceback" not in out.stderr
    out = stsyncd("migrate", "--status", "--config", config)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("9001"))
    assert row.split()[:3] == ["9001", "from_the_future", "unknown"]
    assert "1 unknown to this stsyncd" in out.stdout.splitlines()[-1]


async def test_waiting_for_another_migrator_keeps_asking_for_time(database_dsn: str) -> None:
    holder = await asyncpg.connect(database_dsn)
    conn = await asyncpg.connect(database_dsn)
    pings: list[float] = []
    loop = asyncio.get_running_loop()
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
            migrating = asyncio.create_task(
                migrate_keeping_alive(conn, lambda: pings.append(loop.time()), every=0.1)
            )
            await asyncio.sleep(0.8)
            assert not migrating.done()
        assert await migrating == []
        count = len(pings)
        assert count >= 4, pings
        await asyncio.sleep(0.3)
        assert len(pings) == count  # no pings once migrated
    finally:
        await holder.close()
        await conn.close()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(tenants=())) as sb:
        yield sb


async def test_the_daemon_extends_its_start_timeout_while_migrating(
    sandbox: Sandbox, empty_database_dsn: str, tmp_path: Path
) -> None:
    os.chmod(tmp_path, 0o755)
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.setblocking(False)
    settings = daemon_settings(sandbox, empty_database_dsn, write_key(tmp_path))
    daemon = await DaemonProcess(tmp_path, settings, {"NOTIFY_SOCKET": str(notify_path)}).start()
    try:
        got: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline and "READY=1" not in got:
            try:
                got += (await loop.sock_recv(listener, 4096)).decode().split("\n")
            except BlockingIOError:
                await asyncio.sleep(0.05)
        assert "EXTEND_TIMEOUT_USEC=30000000" in got, got
        assert got.index("EXTEND_TIMEOUT_USEC=30000000") < got.index("READY=1")
    finally:
        await daemon.stop()
        listener.close()
