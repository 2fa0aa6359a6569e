"""Schedules an operator controls at run time: pause/resume (persisted, for every instance) and
SIGHUP reloads (`systemctl reload stsync`) that never drop a run in flight. Real daemons."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.sandbox import FaultRule, Sandbox, SandboxConfig
from tests.support import credential_body, daemon_settings, tenant, write_key

TENANTS = (tenant(211, customers=300, invoices=200),)
EVERY_SECOND = {"name": "every-second", "cron": "* * * * * *", "environment": "production"}
YEARLY = {"name": "yearly", "cron": "0 0 1 1 *", "environment": "production"}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(tenants=TENANTS, export_page_size=50, seed=5)) as sb:
        yield sb


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    return tmp_path


def settings(sandbox: Sandbox, dsn: str, workdir: Path, *schedules: dict[str, Any]) -> Any:
    return daemon_settings(sandbox, dsn, write_key(workdir), schedules=list(schedules))


async def scheduled_runs(dsn: str, name: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT id, status FROM stsync.runs WHERE schedule_name = $1 ORDER BY started_at", name
        )
    finally:
        await conn.close()


async def until(predicate: Any, seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.1)


async def schedule(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    status, body = await daemon.request("GET", "/v1/schedules")
    assert status == 200, body
    return next(s for s in body["schedules"] if s["name"] == name)


async def test_a_paused_schedule_skips_its_ticks_across_restarts_until_resumed(
    sandbox: Sandbox, database_dsn: str, workdir: Path
) -> None:
    config = settings(sandbox, database_dsn, workdir, EVERY_SECOND)
    daemon = await DaemonProcess(workdir, config).start()
    try:
        status, view = await daemon.request("POST", "/v1/schedules/every-second/pause")
        assert status == 200 and view["paused"] is True and view["paused_at"].endswith("Z")
        status, body = await daemon.request("POST", "/v1/schedules/no-such/pause")
        assert status == 404 and "no schedule named 'no-such'" in body["message"]
        await until(
            lambda: _logged(daemon, "schedule.skipped", "paused by an operator"), seconds=10
        )
        before = len(await scheduled_runs(database_dsn, "every-second"))
        await asyncio.sleep(2.5)
        assert len(await scheduled_runs(database_dsn, "every-second")) == before
    finally:
        await daemon.stop()

    # A restart does not resume it: the pause lives in the database.
    daemon = await DaemonProcess(workdir).start()
    try:
        assert (await schedule(daemon, "every-second"))["paused"] is True
        await asyncio.sleep(2.5)
        assert len(await scheduled_runs(database_dsn, "every-second")) == before
        status, view = await daemon.request("POST", "/v1/schedules/every-second/resume")
        assert status == 200 and view["paused"] is False and view["paused_at"] is None
        await until(lambda: _more_runs(database_dsn, "every-second", before), seconds=15)
    finally:
        await daemon.stop()


async def test_sighup_applies_new_schedules_and_lets_the_run_in_flight_finish(
    sandbox: Sandbox, database_dsn: str, workdir: Path
) -> None:
    daemon = await DaemonProcess(
        workdir, settings(sandbox, database_dsn, workdir, YEARLY, EVERY_SECOND)
    ).start()
    try:
        spec = TENANTS[0]
        status, body = await daemon.request("POST", "/v1/credentials", credential_body(spec))
        assert status == 201, body
        sandbox.set_faults(FaultRule(latency_ms=300))  # a run that lasts a few seconds

        async def running() -> bool:
            runs = await scheduled_runs(database_dsn, "every-second")
            return any(r["status"] == "running" for r in runs)

        await until(running)
        in_flight = [r["id"] for r in await scheduled_runs(database_dsn, "every-second")]

        # The every-second schedule goes, `yearly` changes its cron, `added` appears.
        added = {"name": "added", "cron": "0 3 * * *", "environment": "integration"}
        changed = {**YEARLY, "cron": "0 0 2 1 *"}
        DaemonProcess(workdir, settings(sandbox, database_dsn, workdir, changed, added))
        daemon.signal(signal.SIGHUP)

        async def reloaded() -> bool:
            status, body = await daemon.request("GET", "/v1/schedules")
            return status == 200 and {s["name"] for s in body["schedules"]} == {"yearly", "added"}

        await until(reloaded)
        assert (await schedule(daemon, "yearly"))["next_fire_at"].endswith("-01-02T00:00:00Z")
        event = next(e for e in daemon.events() if e.get("event") == "daemon.reloaded")
        assert (event["added"], event["removed"], event["changed"]) == (
            ["added"],
            ["every-second"],
            ["yearly"],
        )

        async def finished() -> bool:
            runs = {
                r["id"]: r["status"] for r in await scheduled_runs(database_dsn, "every-second")
            }
            return all(runs[i] != "running" for i in in_flight)

        await until(finished, seconds=60)
        runs = {r["id"]: r["status"] for r in await scheduled_runs(database_dsn, "every-second")}
        assert [runs[i] for i in in_flight] == ["completed"] * len(in_flight)
        count = len(runs)
        await asyncio.sleep(2.5)
        assert len(await scheduled_runs(database_dsn, "every-second")) == count  # it is gone
    finally:
        await daemon.stop()


async def test_a_bad_file_on_sighup_keeps_the_schedules_and_the_daemon(
    sandbox: Sandbox, database_dsn: str, workdir: Path
) -> None:
    daemon = await DaemonProcess(workdir, settings(sandbox, database_dsn, workdir, YEARLY)).start()
    try:
        daemon.config.write_text(daemon.config.read_text() + "\n[[schedules]]\nname = 'x'\n")
        daemon.signal(signal.SIGHUP)
        await until(lambda: _logged(daemon, "daemon.reload_failed", "schedules"))
        assert daemon.poll() is None
        assert [
            s["name"] for s in (await daemon.request("GET", "/v1/schedules"))[1]["schedules"]
        ] == ["yearly"]
    finally:
        await daemon.stop()


async def _logged(daemon: DaemonProcess, event: str, text: str) -> bool:
    return any(e.get("event") == event and text in str(e) for e in daemon.events())


async def _more_runs(dsn: str, name: str, than: int) -> bool:
    return len(await scheduled_runs(dsn, name)) > than
