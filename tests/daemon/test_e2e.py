"""The real daemon as a subprocess: sandbox, PostgreSQL, control socket, signals, systemd notify."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import FaultRule, Sandbox, SandboxConfig
from tests.support import (
    credential_body,
    daemon_settings,
    db_truth,
    promtool,
    tenant,
    write_key,
)

PROD, INTEG = Environment.PRODUCTION, Environment.INTEGRATION
TENANTS = (
    tenant(201, customers=400, invoices=300),
    tenant(202, customers=300, invoices=200),
    tenant(203, INTEG, customers=200, invoices=100),
)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(tenants=TENANTS, export_page_size=100, seed=11)) as sb:
        yield sb


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    # The socket path must stay short (108 bytes) and the directory reachable.
    os.chmod(tmp_path, 0o755)
    return tmp_path


async def start_daemon(
    sandbox: Sandbox, dsn: str, workdir: Path, env: dict[str, str] | None = None, **sections: Any
) -> DaemonProcess:
    settings = daemon_settings(sandbox, dsn, write_key(workdir), **sections)
    return await DaemonProcess(workdir, settings, env).start()


async def add_all(daemon: DaemonProcess) -> dict[int, str]:
    ids = {}
    for spec in TENANTS:
        status, body = await daemon.request("POST", "/v1/credentials", credential_body(spec))
        assert status == 201, body
        assert spec.client_secret not in str(body)
        ids[spec.tenant_id] = body["id"]
    return ids


async def counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for table in (
            "servicetitan.customers",
            "servicetitan.invoices",
            "stsync.sync_log",
            "stsync.cursors",
            "stsync.runs",
        ):
            out[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
        out["cursor_state"] = hash(
            tuple(
                await conn.fetch("SELECT * FROM stsync.cursors ORDER BY credential_id, data_type")
            )
        )
        return out
    finally:
        await conn.close()


async def assert_truth(sandbox: Sandbox, dsn: str, specs: tuple[Any, ...] = TENANTS) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for spec in specs:
            for dt in DataType:
                truth = sandbox.truth(spec.tenant_id, spec.environment, dt)
                assert await db_truth(conn, dt, spec.environment, spec.tenant_id) == (
                    truth.count,
                    truth.digest,
                )
    finally:
        await conn.close()


async def test_schedule_fires_a_batch_and_the_database_matches(
    sandbox: Sandbox, database_dsn: str, workdir: Path
) -> None:
    daemon = await start_daemon(
        sandbox,
        database_dsn,
        workdir,
        schedules=[{"name": "every-2s", "cron": "*/2 * * * * *", "environment": "production"}],
    )
    try:
        await add_all(daemon)
        conn = await asyncpg.connect(database_dsn)
        try:
            for _ in range(200):
                done = await conn.fetchval(
                    "SELECT count(DISTINCT (credential_id, data_type)) FROM stsync.sync_log "
                    "WHERE trigger = 'scheduled' AND status = 'completed'"
                )
                if done >= 4:
                    break
                await asyncio.sleep(0.1)
            envs = await conn.fetch(
                "SELECT DISTINCT c.environment FROM stsync.sync_log s "
                "JOIN stsync.credentials c ON c.id = s.credential_id"
            )
            assert [r["environment"] for r in envs] == ["production"]
            ticks = await conn.fetch(
                "SELECT schedule_name, scheduled_for FROM stsync.runs WHERE schedule_name IS NOT NULL"
            )
            assert all(r["scheduled_for"].microsecond == 0 for r in ticks)
        finally:
            await conn.close()
        await assert_truth(sandbox, database_dsn, TENANTS[:2])
        status, body = await daemon.request("GET", "/v1/schedules")
        assert status == 200 and body["schedules"][0]["name"] == "every-2s"
        assert body["schedules"][0]["next_fire_at"].endswith("Z")
    finally:
        await daemon.stop()


async def test_process_filters_dry_run_and_concurrency(
    sandbox: Sandbox, database_dsn: str, workdir: Path
) -> None:
    daemon = await start_daemon(sandbox, database_dsn, workdir)
    try:
        ids = await add_all(daemon)
        before = await counts(database_dsn)
        status, plan = await daemon.request(
            "POST", "/v1/process", {"environment": "integration", "dry_run": True, "estimate": True}
        )
        assert status == 200
        assert {i["credential_id"] for i in plan["items"]} == {ids[203]}
        assert {i["data_type"] for i in plan["items"]} == {"customers", "invoices"}
        assert [i["estimated_records"] for i in plan["items"]] == [200, 100]
        assert await counts(database_dsn) == before  # a dry run writes nothing

        status, plan = await daemon.request(
            "POST", "/v1/process", {"company_id": "co202", "data_type": "invoices", "dry_run": True}
        )
        assert [(i["credential_id"], i["data_type"]) for i in plan["items"]] == [
            (ids[202], "invoices")
        ]

        # Slow pages: N syncs with max_concurrent M take about N/M times one.
        sandbox.set_faults(FaultRule(latency_ms=150))
        one = await daemon.run(
            "/v1/process",
            {"credential_id": ids[201], "data_type": "customers", "max_concurrent": 1},
        )
        assert one["successful_syncs"] == 1 and one["total_credentials"] == 1
        serial = await daemon.run("/v1/process", {"full": True, "max_concurrent": 1})
        parallel = await daemon.run("/v1/process", {"full": True, "max_concurrent": 3})
        assert serial["total_syncs"] == parallel["total_syncs"] == 6
        assert parallel["failed_syncs"] == 0
        ratio = serial["execution_time_seconds"] / parallel["execution_time_seconds"]
        assert ratio > 1.8, (serial["execution_time_seconds"], parallel["execution_time_seconds"])
        conn = await asyncpg.connect(database_dsn)
        try:
            rows = await conn.fetch(
                "SELECT started_at, completed_at FROM stsync.sync_log WHERE run_id = $1",
                __import__("uuid").UUID(parallel["run_id"]),
            )
        finally:
            await conn.close()
        peak = max(
            sum(1 for o in rows if o["started_at"] <= r["started_at"] < o["completed_at"])
            for r in rows
        )
        assert peak <= 3
        sandbox.set_faults()
        await assert_truth(sandbox, database_dsn)
        status, st = await daemon.request("GET", "/v1/status?limit=5")
        assert status == 200 and len(st["syncs"]) == 5
        assert st["summary"]["by_status"]["completed"] == st["summary"]["total_syncs"]
    finally:
        await daemon.stop()


async def test_timeout_retry_and_auth_failures(
    sandbox: Sandbox, database_dsn: str, workdir: Path
) -> None:
    daemon = await start_daemon(sandbox, database_dsn, workdir)
    try:
        ids = await add_all(daemon)
        sandbox.set_faults(FaultRule(tenant_id=201, latency_ms=400))
        sandbox.revoke(TENANTS[1].client_id)
        summary = await daemon.run(
            "/v1/process",
            {"environment": "production", "timeout_seconds": 0.8, "max_concurrent": 4},
        )
        by = {(s["credential_id"], s["data_type"]): s for s in summary["syncs"]}
        assert by[(ids[201], "customers")]["status"] == "timed_out"
        assert by[(ids[202], "customers")]["error_category"] == "auth"
        assert summary["failed_syncs"] == 4
        status, failed = await daemon.request("GET", "/v1/status?failed_only=true")
        assert status == 200
        # As the README says: --failed-only is every status a retry picks up.
        assert {s["status"] for s in failed["syncs"]} == {"failed", "timed_out"}
        sandbox.set_faults()
        sandbox.restore(TENANTS[1].client_id)
        _status, plan = await daemon.request(
            "POST", "/v1/retry", {"dry_run": True, "exclude_auth_errors": True}
        )
        assert {(i["credential_id"], i["attempt"]) for i in plan["items"]} == {(ids[201], 2)}
        retried = await daemon.run("/v1/retry", {})
        assert retried["total_syncs"] == 4 and retried["failed_syncs"] == 0
        assert all(s["trigger"] == "retry" and s["retry_of"] for s in retried["syncs"])
        again = await daemon.run("/v1/retry", {})
        assert again["total_syncs"] == 0  # a later success rules a failure out
        await assert_truth(sandbox, database_dsn, TENANTS[:2])
    finally:
        await daemon.stop()


async def test_a_client_gone_mid_run_leaves_the_run_going_and_the_daemon_well(
    sandbox: Sandbox, database_dsn: str, workdir: Path
) -> None:
    daemon = await start_daemon(sandbox, database_dsn, workdir)
    try:
        await add_all(daemon)
        sandbox.set_faults(FaultRule(latency_ms=100))
        reader, writer = await asyncio.open_unix_connection(str(daemon.socket))
        body = b'{"environment": "production"}'
        writer.write(
            b"POST /v1/process HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        seen = b""
        while b"sync.started" not in seen:
            seen += await asyncio.wait_for(reader.read(4096), 30)
        writer.close()
        await writer.wait_closed()

        for _ in range(300):
            status, runs = await daemon.request("GET", "/v1/runs")
            if runs["runs"][0]["status"] != "running":
                break
            await asyncio.sleep(0.1)
        assert runs["runs"][0]["status"] == "completed"
        assert runs["runs"][0]["successful_syncs"] == 4
        status, health = await daemon.request("GET", "/v1/health")
        assert status == 200 and health["status"] == "ok" and health["running_runs"] == 0
        sandbox.set_faults()
        levels = {event["level"] for event in daemon.events()}
        assert levels <= {"INFO", "WARNING"}, levels
    finally:
        await daemon.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
async def test_stop_mid_run_leaves_a_consistent_resumable_database(
    sandbox: Sandbox, database_dsn: str, workdir: Path, signum: int
) -> None:
    daemon = await start_daemon(sandbox, database_dsn, workdir)
    ids = await add_all(daemon)
    sandbox.set_faults(FaultRule(latency_ms=400))
    run = asyncio.create_task(daemon.request("POST", "/v1/process", {"max_concurrent": 6}))
    conn = await asyncpg.connect(database_dsn)
    try:
        for _ in range(200):
            if await conn.fetchval(
                "SELECT count(*) FROM stsync.sync_log WHERE records_processed > 0"
            ):
                break
            await asyncio.sleep(0.05)
        daemon.signal(signum)
        rc = await daemon.wait()
        assert rc == (0 if signum == signal.SIGTERM else -9)
        if signum == signal.SIGTERM:
            # A graceful stop still ends the client's stream, with the run marked interrupted.
            _status, events = await run
            assert events[-1]["event"] == "run.finished"
            assert events[-1]["summary"]["status"] == "interrupted"
        else:
            with pytest.raises(aiohttp.ClientError):
                await run
        statuses = {r["status"] for r in await conn.fetch("SELECT status FROM stsync.sync_log")}
        if signum == signal.SIGTERM:
            assert statuses <= {"completed", "interrupted"} and "interrupted" in statuses
        sandbox.set_faults()
        await daemon.start()
        statuses = {r["status"] for r in await conn.fetch("SELECT status FROM stsync.sync_log")}
        assert "running" not in statuses and "interrupted" in statuses
        summary = await daemon.run("/v1/process", {"max_concurrent": 6})
        assert summary["failed_syncs"] == 0
        await assert_truth(sandbox, database_dsn)
        assert ids
    finally:
        await conn.close()
        await daemon.stop()


async def test_systemd_ready_and_watchdog_and_metrics(
    sandbox: Sandbox, database_dsn: str, workdir: Path
) -> None:
    notify_path = workdir / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.setblocking(False)
    daemon = await start_daemon(
        sandbox,
        database_dsn,
        workdir,
        env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"},
        metrics={"listen": "127.0.0.1:0"},
    )
    try:
        got: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline and not ("READY=1" in got and "WATCHDOG=1" in got):
            try:
                got += (await loop.sock_recv(listener, 4096)).decode().split("\n")
            except BlockingIOError:
                await asyncio.sleep(0.05)
        assert "READY=1" in got and "WATCHDOG=1" in got
        ready = [e for e in daemon.events() if e.get("event") == "daemon.ready"]
        assert ready
    finally:
        await daemon.stop()
        listener.close()


async def test_metrics_pass_promtool(sandbox: Sandbox, database_dsn: str, workdir: Path) -> None:
    tool = promtool()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = await start_daemon(
        sandbox, database_dsn, workdir, metrics={"listen": f"127.0.0.1:{port}"}
    )
    try:
        await add_all(daemon)
        await daemon.run("/v1/process", {"environment": "integration"})
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.read()
        assert b"stsync_syncs_total" in text and b'status="completed"' in text
        assert b"cs.secret" not in text
        check = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        await daemon.stop()


async def test_other_uid_is_refused(sandbox: Sandbox, database_dsn: str) -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root to act as another user")
    # Reachable by `nobody` through the file system, so that only SO_PEERCRED can refuse it.
    workdir = Path(tempfile.mkdtemp(prefix="stsync-uid-"))
    os.chmod(workdir, 0o755)
    daemon = await start_daemon(sandbox, database_dsn, workdir, control={"socket_mode": 0o666})
    try:
        os.chmod(daemon.socket.parent, 0o755)
        probe = (
            "import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);"
            "s.sendall(b'GET /v1/health HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n');"
            "print(s.recv(200).decode().split()[1])"
        )
        out = subprocess.run(
            ["runuser", "-u", "nobody", "--", "python3", "-c", probe, str(daemon.socket)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout.strip() == "403", out.stderr
        status, _ = await daemon.request("GET", "/v1/health")
        assert status == 200
    finally:
        await daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_malformed_requests_get_4xx_and_the_daemon_goes_on(
    sandbox: Sandbox, database_dsn: str, workdir: Path
) -> None:
    daemon = await start_daemon(sandbox, database_dsn, workdir)
    try:
        connector = aiohttp.UnixConnector(path=str(daemon.socket))
        async with aiohttp.ClientSession(connector=connector) as s:
            for method, path, data in [
                ("POST", "/v1/process", b"{not json"),
                ("POST", "/v1/process", b'{"environment": "staging"}'),
                ("POST", "/v1/process", b'{"bogus": 1}'),
                ("POST", "/v1/retry", b"[1, 2]"),
                ("GET", "/v1/status?limit=abc", None),
                ("POST", "/v1/cancel/not-a-uuid", None),
                ("GET", "/v1/credentials/00000000-0000-0000-0000-000000000000", None),
                ("GET", "/v1/nothing-here", None),
            ]:
                async with s.request(method, f"http://localhost{path}", data=data) as r:
                    body = await r.json()
                    assert 400 <= r.status < 500, (path, r.status, body)
                    assert body["message"], body
        status, body = await daemon.request("GET", "/v1/health")
        assert status == 200 and body["database"] == "ok"
    finally:
        await daemon.stop()
