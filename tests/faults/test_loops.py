"""Background loops are supervised: a crash is logged critical and the loop restarts; a loop that
cannot recover makes the daemon unhealthy everywhere (health, /healthz, the systemd watchdog), and
shutdown still completes. The daemon runs in-process so that a fault can be planted in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stsync_daemon.config import Settings
from stsync_daemon.daemon.app import Daemon
from stsync_daemon.daemon.health import Health
from stsync_daemon.sandbox import Sandbox, SandboxConfig
from tests.support import settings_for, tenant, write_key


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(tenants=(tenant(61, customers=50, invoices=20),))) as sb:
        yield sb


class Watchdog:
    """A stand-in for systemd's notify socket: collects what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def drain(self) -> list[str]:
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(self.sock.recv(4096).decode())
        return messages

    def pings(self) -> int:
        return sum("WATCHDOG=1" in m for m in self.drain())


def settings(sandbox: Sandbox, dsn: str, tmp_path: Path) -> Settings:
    return settings_for(
        sandbox,
        dsn,
        write_key(tmp_path),
        control={"socket": str(tmp_path / "control.sock")},
        metrics={"listen": "127.0.0.1:0"},
        cluster={"orphan_sweep_seconds": 0.2},
    )


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def health(socket_path: Path) -> dict[str, Any]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://localhost/v1/health") as resp,
    ):
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_a_crashing_loop_is_logged_critical_and_restarted(
    sandbox: Sandbox,
    database_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    os.chmod(tmp_path, 0o755)
    daemon = Daemon(settings(sandbox, database_dsn, tmp_path))
    daemon.health = Health(restart_seconds=(0.05,))
    await daemon.start()
    try:
        runner = daemon.runner
        real = runner._claim_round
        crashes = {"left": 3}

        async def crashing() -> None:
            if crashes["left"]:
                crashes["left"] -= 1
                raise RuntimeError("planted fault")
            await real()

        monkeypatch.setattr(runner, "_claim_round", crashing)
        with caplog.at_level(logging.CRITICAL):
            runner.wake()
            for _ in range(200):
                if crashes["left"] == 0 and daemon.health.loops["claims"].crashes == 0:
                    break
                runner.wake()
                await asyncio.sleep(0.02)
        crashed = [r for r in caplog.records if r.getMessage() == "loop.crashed"]
        assert len(crashed) == 3 and all(r.exc_info for r in crashed)
        assert daemon.health.loops["claims"].restarts == 3
        assert (await health(tmp_path / "control.sock"))["status"] == "ok"
        # The restarted loop does its work: a run goes through.
        status, _ = await get(f"http://{daemon.metrics_address}/healthz")
        assert status == 200
    finally:
        await asyncio.wait_for(daemon.stop(grace_seconds=0), 30)


async def test_a_loop_that_cannot_recover_makes_the_daemon_unhealthy(
    sandbox: Sandbox,
    database_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    os.chmod(tmp_path, 0o755)
    watchdog = Watchdog(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(watchdog.path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = Daemon(settings(sandbox, database_dsn, tmp_path))
    daemon.health = Health(restart_seconds=(0.02,))
    await daemon.start()
    try:
        await asyncio.sleep(0.3)
        assert watchdog.pings() > 0

        def broken(now: Any = None) -> None:
            raise RuntimeError("APScheduler lost its timer")

        monkeypatch.setattr(daemon.scheduler, "check", broken)
        for _ in range(300):
            if daemon.health.failed_loops:
                break
            await asyncio.sleep(0.02)
        assert daemon.health.failed_loops == ["scheduler"]
        answer = await health(tmp_path / "control.sock")
        assert answer["status"] == "unhealthy" and answer["loops"]["scheduler"] == "failed"
        assert "scheduler" in answer["problems"][0]
        status, text = await get(f"http://{daemon.metrics_address}/healthz")
        assert status == 503 and text.startswith("unhealthy\n")
        watchdog.drain()
        await asyncio.sleep(0.4)
        assert watchdog.pings() == 0  # systemd will restart us: the way back to full work
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stsync_daemon.cli.stsyncctl",
            "--socket",
            str(tmp_path / "control.sock"),
            "health",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 1 and b"unhealthy" in out
    finally:
        await asyncio.wait_for(daemon.stop(grace_seconds=0), 30)
        watchdog.sock.close()
