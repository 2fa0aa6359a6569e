"""End to end: the real `stsyncctl` against the real `stsyncd` (subprocess, real socket, sandbox,
PostgreSQL), as an operator would use them."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import FaultRule, Sandbox, SandboxConfig
from tests.support import daemon_settings, tenant, write_key

from . import fake_daemon
from .conftest import STSYNCCTL, Result, cli_env, run_as_nobody, run_cli

PROD, INTEG = Environment.PRODUCTION, Environment.INTEGRATION
TENANTS = (
    tenant(301, customers=300, invoices=200),
    tenant(302, customers=200, invoices=100),
    tenant(303, INTEG, customers=150, invoices=50),
)
SECRETS = [spec.client_secret for spec in TENANTS]
pytestmark = pytest.mark.slow


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(tenants=TENANTS, export_page_size=100, seed=5)) as sb:
        yield sb


async def start_daemon(sandbox: Sandbox, dsn: str, workdir: Path, **sections: Any) -> DaemonProcess:
    # The socket's directory exists beforehand and is world-traversable, so that the socket's own
    # mode (and the daemon's peer check) decide who gets in.
    (workdir / "run").mkdir(mode=0o755, exist_ok=True)
    os.chmod(workdir / "run", 0o755)
    settings = daemon_settings(sandbox, dsn, write_key(workdir), **sections)
    return await DaemonProcess(workdir, settings).start()


@pytest.fixture
async def daemon(
    sandbox: Sandbox, database_dsn: str, short_tmp: Path
) -> AsyncIterator[DaemonProcess]:
    process = await start_daemon(sandbox, database_dsn, short_tmp)
    try:
        yield process
    finally:
        await process.stop()


class Operator:
    """Runs stsyncctl against one daemon and keeps every output to check for secrets."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.outputs: list[str] = []

    async def __call__(self, *argv: str, stdin: str | None = None) -> Result:
        result = await run_cli("--socket", str(self.daemon.socket), *argv, stdin=stdin)
        self.outputs.append(result.stdout + result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    async def json(self, *argv: str, stdin: str | None = None, code: int = 0) -> Any:
        result = await self("--json-output", *argv, stdin=stdin)
        assert result.code == code, result.stderr
        return json.loads(result.stdout)

    async def add(
        self, spec: Any, *, secret: str | None = None, company_id: str | None = None
    ) -> str:
        view = await self.json(
            "credentials",
            "add",
            "--company-id",
            company_id or f"co{spec.tenant_id}",
            "--company-name",
            f"Company {spec.tenant_id}",
            "-e",
            spec.environment.value,
            "--tenant-id",
            str(spec.tenant_id),
            "--client-id",
            spec.client_id,
            stdin=(secret or spec.client_secret) + "\n",
        )
        return str(view["id"])

    def assert_no_secret(self, *extra: str) -> None:
        for output in self.outputs:
            for secret in (*SECRETS, *extra):
                assert secret not in output


async def table_counts(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        out: dict[str, Any] = {}
        for table in (
            "servicetitan.customers",
            "servicetitan.invoices",
            "stsync.sync_log",
            "stsync.runs",
            "stsync.credentials",
        ):
            out[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
        out["cursors"] = [
            tuple(r)
            for r in await conn.fetch(
                "SELECT * FROM stsync.cursors ORDER BY credential_id, data_type"
            )
        ]
        out["credential_rows"] = [
            tuple(r) for r in await conn.fetch("SELECT * FROM stsync.credentials ORDER BY id")
        ]
        return out
    finally:
        await conn.close()


async def test_credentials_commands_and_secrets_never_printed(
    daemon: DaemonProcess, sandbox: Sandbox, short_tmp: Path
) -> None:
    ctl = Operator(daemon)
    first = await ctl.add(TENANTS[0])
    secret_file = short_tmp / "secret"
    secret_file.write_text(TENANTS[1].client_secret + "\n")
    added = await ctl(
        "credentials",
        "add",
        "--company-id",
        "co302",
        "--company-name",
        "Company 302",
        "--environment",
        "production",
        "--tenant-id",
        "302",
        "--client-id",
        TENANTS[1].client_id,
        "--client-secret-file",
        str(secret_file),
        "--no-schedule",
    )
    assert added.code == 0, added.stderr
    assert added.stdout.startswith("Added credential ")
    second = added.stdout.split()[2]

    listing = await ctl("credentials", "list")
    assert listing.code == 0 and first in listing.stdout and second in listing.stdout
    as_json = await ctl.json("credentials", "list")
    by_id = {c["id"]: c for c in as_json["credentials"]}
    assert by_id[second]["schedule_enabled"] is False

    show = await ctl("credentials", "show", first)
    assert show.code == 0 and "Company 301" in show.stdout and "never shown" in show.stdout

    ok = await ctl("credentials", "test", first)
    assert ok.code == 0 and ok.stdout.startswith("OK: "), ok.stdout + ok.stderr
    sandbox.revoke(TENANTS[0].client_id)
    bad = await ctl("credentials", "test", first)
    assert bad.code == 1 and bad.stdout.startswith("FAILED: ")
    sandbox.restore(TENANTS[0].client_id)

    renamed = await ctl.json("credentials", "update", first, "--company-name", "Renamed Co")
    assert renamed["company"] == "Renamed Co"
    rescheduled = await ctl.json("credentials", "update", second, "--schedule")
    assert rescheduled["schedule_enabled"] is True
    resecret = await ctl(
        "credentials",
        "update",
        second,
        "--client-secret-file",
        "-",
        stdin=TENANTS[1].client_secret + "\n",
    )
    assert resecret.code == 0, resecret.stderr

    disabled = await ctl.json("credentials", "disable", first)
    assert disabled["status"] == "disabled"
    enabled = await ctl("credentials", "enable", first)
    assert enabled.code == 0 and enabled.stdout.startswith(f"Enabled credential {first}")

    unknown = await ctl("credentials", "show", "99999999-9999-4999-8999-999999999999")
    assert unknown.code == 1 and unknown.stderr.startswith("stsyncctl: ")

    removed = await ctl("credentials", "remove", "-y", second)
    assert (
        removed.code == 0
        and removed.stdout == f"Removed credential {second} (its history is kept)\n"
    )
    assert second not in (await ctl("credentials", "list")).stdout
    kept = await ctl.json("credentials", "list", "--status", "removed")
    assert [c["id"] for c in kept["credentials"]] == [second]
    refused = await ctl("credentials", "enable", second)
    assert refused.code == 1 and "was removed" in refused.stderr
    purged = await ctl("credentials", "remove", "-y", "--purge", second)
    assert purged.code == 0 and purged.stdout == f"Removed credential {second} and its history\n"
    gone = await ctl.json("credentials", "list", "--status", "removed")
    assert gone["credentials"] == []
    ctl.assert_no_secret()


async def test_dry_run_for_integration_lists_only_integration_and_writes_nothing(
    daemon: DaemonProcess, database_dsn: str
) -> None:
    ctl = Operator(daemon)
    ids = {spec.tenant_id: await ctl.add(spec) for spec in TENANTS}
    before = await table_counts(database_dsn)

    plan = await ctl.json("process", "--dry-run", "-e", "integration")
    assert plan["dry_run"] is True
    assert {item["environment"] for item in plan["items"]} == {"integration"}
    assert {item["credential_id"] for item in plan["items"]} == {ids[303]}
    assert {item["data_type"] for item in plan["items"]} == {"customers", "invoices"}

    human = await ctl("process", "--dry-run", "--environment", "integration", "--estimate")
    assert human.code == 0, human.stderr
    assert human.stdout.splitlines()[0] == "Found 1 credentials to process"
    assert "Company 303" in human.stdout and "Company 301" not in human.stdout
    assert "Estimated" in human.stdout
    assert "Dry run: nothing was synced or written." in human.stdout

    retry_plan = await ctl("retry", "--dry-run")
    assert retry_plan.code == 0 and retry_plan.stdout.startswith("Found 0 failed syncs to retry")

    assert await table_counts(database_dsn) == before
    ctl.assert_no_secret()


async def test_process_status_runs_report_with_correct_numbers(
    daemon: DaemonProcess, sandbox: Sandbox
) -> None:
    ctl = Operator(daemon)
    for spec in TENANTS:
        await ctl.add(spec)

    summary = await ctl.json("process", "-e", "production", "--max-concurrent", "2", "-t", "120")
    expected = sum(
        sandbox.truth(spec.tenant_id, spec.environment, dt).count
        for spec in TENANTS[:2]
        for dt in DataType
    )
    assert summary["total_credentials"] == 2
    assert summary["successful_syncs"] == 4 and summary["failed_syncs"] == 0
    assert summary["total_records_processed"] == expected
    assert summary["execution_time_seconds"] > 0
    assert len(summary["syncs"]) == 4
    assert {s["environment"] for s in summary["syncs"]} == {"production"}

    sandbox_change = await sandbox.mutate(303, INTEG, DataType.CUSTOMERS, create=3)
    assert sandbox_change is not None
    human = await ctl("process", "-c", "co303", "-d", "customers", "--full")
    assert human.code == 0, human.stdout + human.stderr
    lines = human.stdout.splitlines()
    assert lines[0] == "Found 1 credentials to process"
    records = sandbox.truth(303, INTEG, DataType.CUSTOMERS).count
    assert (
        f"Completed sync for Company 303 (integration, customers): {records} records processed"
        in lines
    )
    assert "Syncs:             1 (1 successful, 0 failed)" in human.stdout

    # A company filter that matches nothing is a mistake (a typo in a cron line), not success.
    nothing = await ctl("process", "-c", "no-such-company")
    assert (nothing.code, nothing.stdout) == (1, "")
    assert nothing.stderr == (
        "stsyncctl: no credential matches --company-id no-such-company "
        "(see `stsyncctl credentials list`)\n"
    )
    elsewhere = await ctl("process", "--dry-run", "-c", "co303", "-e", "production")
    assert elsewhere.code == 1 and "--company-id co303 --environment production" in elsewhere.stderr
    # No filter naming anything: nothing to do is still success.
    assert (await ctl("process", "--dry-run", "-e", "integration", "-d", "invoices")).code == 0

    status = await ctl.json("status")
    assert status["summary"]["total_syncs"] == 5
    assert status["summary"]["by_status"] == {"completed": 5}
    keys = {
        "id",
        "company_id",
        "company",
        "credential_id",
        "environment",
        "data_type",
        "status",
        "trigger",
        "started_at",
        "completed_at",
        "records_processed",
        "records_successful",
        "records_failed",
        "error_category",
        "error_message",
    }
    assert all(keys <= set(sync) for sync in status["syncs"])
    assert all(sync["started_at"].endswith("Z") for sync in status["syncs"])
    assert sum(s["records_processed"] for s in status["syncs"]) == expected + records

    table = await ctl("status", "--limit", "2")
    assert table.code == 0
    assert table.stdout.splitlines()[0].split()[:2] == ["ID", "Company"]
    lines = table.stdout.splitlines()
    rows = lines[1 : lines.index("")]
    assert len(rows) == 2 and all("completed" in row for row in rows)
    assert "5 (completed 5), 2 shown" in table.stdout
    assert "Success rate:      100.0%" in table.stdout

    by_company = await ctl.json("status", "-c", "co301", "--last-24h")
    assert {s["company_id"] for s in by_company["syncs"]} == {"co301"}
    assert (await ctl("status", "--running-only")).stdout == (
        "No sync operations found matching the criteria\n"
    )

    assert (await ctl("schedules")).code == 0
    health = await ctl.json("health")
    assert health["database"] == "ok"
    ctl.assert_no_secret()


async def test_failures_failed_only_retry_and_exit_1(
    daemon: DaemonProcess, sandbox: Sandbox
) -> None:
    ctl = Operator(daemon)
    good = await ctl.add(TENANTS[0])
    wrong = "cs.WRONG-SECRET-302"
    bad = await ctl.add(TENANTS[1], secret=wrong)

    run = await ctl("process", "-e", "production")
    assert run.code == 1
    lines = run.stdout.splitlines()
    assert lines[0] == "Found 2 credentials to process"
    failed_lines = [line for line in lines if line.startswith("Sync failed for Company 302")]
    assert len(failed_lines) == 2, run.stdout
    assert any(line.startswith("Completed sync for Company 301") for line in lines)
    assert "Syncs:             4 (2 successful, 2 failed)" in run.stdout

    failed = await ctl.json("status", "-f")
    assert {s["status"] for s in failed["syncs"]} == {"failed"}
    assert {s["credential_id"] for s in failed["syncs"]} == {bad}
    assert {s["error_category"] for s in failed["syncs"]} == {"auth"}
    human = await ctl("status", "--failed-only")
    assert good not in human.stdout and "Company 301" not in human.stdout

    assert (await ctl("credentials", "test", bad)).code == 1
    plan = await ctl("retry", "--dry-run", "-m", "1")
    assert plan.stdout.startswith("Found 2 failed syncs to retry"), plan.stdout
    no_auth = await ctl("retry", "--dry-run", "--exclude-auth-errors")
    assert no_auth.stdout.startswith("Found 0 failed syncs to retry")
    # Still the wrong secret: the retry fails too (exit 1), and its syncs are attempt 2.
    still = await ctl.json("retry", code=1)
    assert still["failed_syncs"] == 2 and {s["attempt"] for s in still["syncs"]} == {2}
    capped = await ctl("retry", "--dry-run", "--max-retries", "1")
    assert capped.stdout.startswith("Found 0 failed syncs to retry"), capped.stdout
    assert "gave up after 2 attempts" in capped.stdout

    fixed = await ctl(
        "credentials",
        "update",
        bad,
        "--client-secret-file",
        "-",
        stdin=TENANTS[1].client_secret + "\n",
    )
    assert fixed.code == 0, fixed.stderr
    retried = await ctl.json("retry")
    assert retried["successful_syncs"] == 2 and retried["failed_syncs"] == 0
    assert {s["trigger"] for s in retried["syncs"]} == {"retry"}
    again = await ctl("retry")
    assert again.code == 0 and again.stdout.startswith("Found 0 failed syncs to retry")
    ctl.assert_no_secret(wrong)


async def test_running_only_and_cancel(daemon: DaemonProcess, sandbox: Sandbox) -> None:
    ctl = Operator(daemon)
    for spec in TENANTS[:2]:
        await ctl.add(spec)
    sandbox.set_faults(FaultRule(latency_ms=1500))
    background = await asyncio.create_subprocess_exec(
        str(STSYNCCTL),
        "--socket",
        str(daemon.socket),
        "process",
        "-e",
        "production",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    try:
        running: list[dict[str, Any]] = []
        for _ in range(100):
            running = (await ctl.json("status", "--running-only"))["syncs"]
            if running:
                break
            await asyncio.sleep(0.2)
        assert running and {s["status"] for s in running} == {"running"}
        shown = await ctl("status", "-r")
        rows = shown.stdout.splitlines()[1:]
        assert rows and all(
            " Running " in row for row in rows if row.startswith(tuple("0123456789abcdef"))
        )

        run_id = running[0]["run_id"]
        cancelled = await ctl("cancel", run_id)
        assert cancelled.code == 0 and cancelled.stdout.startswith(f"Cancelled run {run_id}")
        out, err = await asyncio.wait_for(background.communicate(), 60)
    finally:
        sandbox.set_faults()
        if background.returncode is None:
            background.kill()
            await background.wait()
    assert background.returncode == 1, out.decode() + err.decode()
    assert out.decode().startswith("Found 2 credentials to process")
    gone = await ctl("cancel", run_id)
    assert gone.code == 1 and gone.stderr.startswith("stsyncctl: ")


async def test_exit_codes_usage_and_stopped_daemon(daemon: DaemonProcess) -> None:
    ctl = Operator(daemon)
    assert (await ctl("status")).code == 0
    wrong = await ctl("status", "--no-such-option")
    assert wrong.code == 2
    assert wrong.stderr.splitlines()[0].startswith("usage: stsyncctl")
    assert "unrecognized arguments: --no-such-option" in wrong.stderr.splitlines()[-1]
    bad_value = await ctl("process", "-d", "jobs")
    assert bad_value.code == 2 and "argument -d/--data-type" in bad_value.stderr

    await daemon.stop()
    for argv in (["status"], ["--json-output", "process"], ["credentials", "list"]):
        stopped = await ctl(*argv)
        assert stopped.code == 3 and stopped.stdout == ""
        [line] = stopped.stderr.splitlines()
        assert str(daemon.socket) in line and "stsync.service" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
async def test_socket_without_permission_and_refused_peer(
    sandbox: Sandbox, database_dsn: str, short_tmp: Path
) -> None:
    closed = await start_daemon(sandbox, database_dsn, short_tmp, control={"socket_mode": 0o600})
    try:
        code, stdout, stderr = await asyncio.to_thread(
            run_as_nobody, ["--socket", str(closed.socket), "status"]
        )
    finally:
        await closed.stop()
    assert (code, stdout) == (3, ""), stderr
    assert stderr.startswith(f"stsyncctl: permission denied on the daemon's socket {closed.socket}")

    # World-writable socket: the kernel lets `nobody` in, the daemon's SO_PEERCRED check does not.
    open_socket = await start_daemon(
        sandbox, database_dsn, short_tmp, control={"socket_mode": 0o666}
    )
    try:
        code, stdout, stderr = await asyncio.to_thread(
            run_as_nobody, ["--socket", str(open_socket.socket), "--json-output", "status"]
        )
    finally:
        await open_socket.stop()
    assert (code, stdout) == (3, ""), stderr
    [line] = stderr.splitlines()
    # The daemon names its group: by default its own (root's here), the group operators join.
    group = grp.getgrgid(os.getegid()).gr_name
    assert "refused this user" in line and f"usermod -aG {group} " in line


async def test_runs_and_report(daemon: DaemonProcess) -> None:
    ctl = Operator(daemon)
    await ctl.add(TENANTS[2])
    assert (await ctl("process")).code == 0
    runs = await ctl.json("runs", "--limit", "5")
    assert [r["status"] for r in runs["runs"]] == ["completed"]
    assert runs["runs"][0]["records_processed"] == 200
    table = await ctl("runs")
    assert table.code == 0 and runs["runs"][0]["id"] in table.stdout
    report = await ctl("report", "--last-24h")
    assert report.code == 0 and "Company 303" in report.stdout
    assert (await ctl.json("report", "--hours", "2"))["hours"] == 2


async def test_dead_letters_and_their_count_in_status(
    daemon: DaemonProcess, database_dsn: str
) -> None:
    """The real daemon's dead letters, as the fake daemon's contract has them."""
    ctl = Operator(daemon)
    credential = await ctl.add(TENANTS[0])
    conn = await asyncpg.connect(database_dsn)
    try:
        rows = [
            (b'{"id": 1, "name": "A\\u0000B"}', False),
            (b'{"id": 2, "x": "\xff"}', False),
            (b'{"id": 3}', True),
        ]
        for n, (raw, resolved) in enumerate(rows):
            await conn.execute(
                "INSERT INTO stsync.dead_letters (credential_id, environment, tenant_id, "
                "data_type, record_id, reason, raw, created_at, resolved_at) VALUES ($1, "
                "'production', $2, 'customers', $3, 'cannot store it', $4, "
                "now() - make_interval(mins => $5), CASE WHEN $6 THEN now() END)",
                uuid.UUID(credential),
                TENANTS[0].tenant_id,
                str(n + 1),
                raw,
                n,
                resolved,
            )
    finally:
        await conn.close()

    document = await ctl.json("dead-letters")
    fake = fake_daemon.dead_letters_document({})
    assert set(document) == set(fake)
    assert [set(item) for item in document["dead_letters"]] == [set(fake["dead_letters"][0])] * 2
    assert [item["record_id"] for item in document["dead_letters"]] == ["1", "2"]
    assert document["total"] == 2
    assert document["dead_letters"][1]["raw"] == '{"id": 2, "x": "\\xff"}'
    assert document["dead_letters"][0]["company"] == "Company 301"

    table = await ctl("dead-letters", "--all", "-c", "co301", "-d", "customers")
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["ID", "Company"]
    assert len(lines) == 1 + 3 + 2 and lines[-1] == "3 dead letters (showing 3)"
    assert (await ctl("dead-letters", "-e", "integration")).stdout == (
        "No open dead letters found matching the criteria\n"
    )

    status = await ctl.json("status")
    assert set(status["summary"]) == set(fake_daemon.status_summary([]))
    assert status["summary"]["dead_letters"] == 2
    assert (await ctl.json("status", "-c", "nobody"))["summary"]["dead_letters"] == 0
    text = await ctl("status", "-r")
    assert text.stdout.splitlines() == [
        "No sync operations found matching the criteria",
        "2 open dead letters: see `stsyncctl dead-letters`",
    ]

    status_code, body = await daemon.request("GET", "/v1/dead-letters?limit=10001")
    assert status_code == 400 and body["message"].startswith("limit: ")
    status_code, body = await daemon.request("GET", "/v1/dead-letters?data_type=both")
    assert status_code == 400 and body["message"].startswith("data_type: ")
    status_code, body = await daemon.request("GET", "/v1/dead-letters?include_resolved=maybe")
    assert status_code == 400 and body["message"].startswith("include_resolved: ")
    ctl.assert_no_secret()


# -- at scale (issue 14): id prefixes, server-side filters, show, quiet ------------------------


async def insert_sync(
    dsn: str, credential_id: str, status: str, message: str, *, sync_id: uuid.UUID | None = None
) -> str:
    """A finished sync row as the daemon would have left it (timed out, interrupted...)."""
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(
            "INSERT INTO stsync.sync_log (id, credential_id, data_type, trigger, mode, status, "
            "started_at, completed_at, error_category, error_message) VALUES ($1, $2, "
            "'invoices', 'scheduled', 'incremental', $3, now() - interval '2 hours', "
            "now() - interval '1 hour', 'timeout', $4) RETURNING id",
            sync_id or uuid.uuid4(),
            uuid.UUID(credential_id),
            status,
            message,
        )
        return str(value)
    finally:
        await conn.close()


async def test_id_prefixes_resolve_on_the_daemon(daemon: DaemonProcess, database_dsn: str) -> None:
    ctl = Operator(daemon)
    ids = [await ctl.add(spec) for spec in TENANTS]
    # Two credentials whose ids share a prefix (as they will, with 10,000 tenants).
    conn = await asyncpg.connect(database_dsn)
    try:
        for n, old in enumerate(ids[:2], start=1):
            await conn.execute(
                "UPDATE stsync.credentials SET id = $1 WHERE id = $2",
                uuid.UUID(f"abcd{n:04x}-0000-4000-8000-000000000000"),
                uuid.UUID(old),
            )
    finally:
        await conn.close()
    first, second, third = (
        "abcd0001-0000-4000-8000-000000000000",
        "abcd0002-0000-4000-8000-000000000000",
        ids[2],
    )

    ambiguous = await ctl("credentials", "show", "ABCD")
    assert (ambiguous.code, ambiguous.stdout) == (1, "")
    assert ambiguous.stderr == (
        "stsyncctl: id prefix abcd is ambiguous: 2 credentials match; give more of its digits\n"
    )
    shown = await ctl.json("credentials", "show", "abcd0001")
    assert shown["id"] == first
    disabled = await ctl("credentials", "disable", "abcd0002-0")
    assert disabled.code == 0 and disabled.stdout.startswith(f"Disabled credential {second} ")
    none = await ctl("credentials", "enable", "abcd0003")
    assert none.code == 1 and none.stderr == "stsyncctl: no credential id starts with abcd0003\n"
    whole = await ctl("credentials", "test", "99999999-9999-4999-8999-999999999999")
    assert whole.code == 1 and whole.stderr == (
        "stsyncctl: no credential with id 99999999-9999-4999-8999-999999999999\n"
    )
    short = await ctl("credentials", "show", "abc")
    assert short.code == 2 and "CREDENTIAL_ID" in short.stderr.splitlines()[-1]

    # process --credential-id: a prefix selects its one credential; an ambiguous one, none.
    plan = await ctl.json("process", "--dry-run", "--credential-id", third[:8])
    assert {item["credential_id"] for item in plan["items"]} == {third}
    assert (await ctl("process", "--dry-run", "--credential-id", "abcd")).code == 1
    run = await ctl.json("process", "--credential-id", third[:6], "-d", "customers")
    assert run["successful_syncs"] == 1
    [sync] = run["syncs"]

    # status --run, show and cancel take prefixes of run and sync ids too.
    by_run = await ctl.json("status", "--run", run["run_id"][:5])
    assert [s["id"] for s in by_run["syncs"]] == [sync["id"]]
    assert by_run["summary"]["total_syncs"] == 1
    assert (await ctl.json("show", sync["id"][:7]))["id"] == sync["id"]
    gone = await ctl("cancel", run["run_id"][:6])
    assert gone.code == 1 and gone.stderr == (
        f"stsyncctl: no running run or sync with id {run['run_id']}\n"
    )
    # A sync id sharing the run's first digits: `cancel` cannot tell which is meant.
    twin = uuid.UUID(run["run_id"][:9] + "0000-4000-8000-000000000000")
    await insert_sync(database_dsn, third, "failed", "x", sync_id=twin)
    twins = await ctl("cancel", run["run_id"][:8])
    assert twins.code == 1
    assert twins.stderr.startswith(
        f"stsyncctl: id prefix {run['run_id'][:8]} is ambiguous: 2 runs or syncs match"
    )

    letters = await ctl.json("dead-letters", "--credential-id", third[:4])
    assert letters == {"dead_letters": [], "total": 0}
    ctl.assert_no_secret()


async def test_server_side_filters_show_failed_only_and_quiet(
    daemon: DaemonProcess, database_dsn: str
) -> None:
    ctl = Operator(daemon)
    good = await ctl.add(TENANTS[0])
    bad = await ctl.add(TENANTS[1], secret="cs.WRONG-302")
    integ = await ctl.add(TENANTS[2])

    quiet_ok = await ctl("process", "-q", "-e", "integration")
    assert (quiet_ok.code, quiet_ok.stdout, quiet_ok.stderr) == (0, "", "")
    quiet_failed = await ctl("process", "--quiet", "-e", "production")
    assert quiet_failed.code == 1 and quiet_failed.stdout == ""
    lines = quiet_failed.stderr.splitlines()
    assert len(lines) == 3, lines
    assert all(
        line.startswith("stsyncctl: Sync failed for Company 302 (production, ")
        for line in lines[:2]
    )
    assert lines[2].startswith("stsyncctl: run ") and "2 of 4 syncs failed" in lines[2]

    # credentials list --status / --environment / --company-id, filtered by the daemon.
    errored = await ctl.json(
        "credentials", "list", "--status", "error", "--environment", "production"
    )
    assert [c["id"] for c in errored["credentials"]] == [bad]
    active = await ctl.json("credentials", "list", "--status", "active")
    assert {c["id"] for c in active["credentials"]} == {good, integ}
    assert [
        c["id"] for c in (await ctl.json("credentials", "list", "-c", "co303"))["credentials"]
    ] == [integ]
    nothing = await ctl("credentials", "list", "--status", "disabled")
    assert nothing.stdout == "No credentials found matching the criteria\n"

    # --failed-only: failed, timed out and interrupted, as the README says.
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    long_message = (
        "ServiceTitan answered 400 on GET /accounting/v2/tenant/301/export/invoices: the "
        "continuation token is malformed or was issued for another export; start a new export "
        f"(traceId {trace})"
    )
    timed_out = await insert_sync(database_dsn, good, "timed_out", long_message)
    interrupted = await insert_sync(database_dsn, integ, "interrupted", "the daemon stopped")
    failed = await ctl.json("status", "-f")
    assert {s["status"] for s in failed["syncs"]} == {"failed", "timed_out", "interrupted"}
    assert {timed_out, interrupted} <= {s["id"] for s in failed["syncs"]}
    assert failed["summary"]["total_syncs"] == 4
    assert failed["summary"]["by_status"] == {"failed": 2, "timed_out": 1, "interrupted": 1}

    # --environment, --data-type, --since: filters of the table and of the summary alike.
    prod_invoices = await ctl.json("status", "-e", "production", "-d", "invoices")
    assert {(s["environment"], s["data_type"]) for s in prod_invoices["syncs"]} == {
        ("production", "invoices")
    }
    assert prod_invoices["summary"]["total_syncs"] == len(prod_invoices["syncs"]) == 3
    recent = await ctl.json("status", "--since", "30m")
    assert timed_out not in {s["id"] for s in recent["syncs"]}
    assert recent["summary"]["total_syncs"] == 6
    earlier = await ctl.json("status", "--since", "3h", "-f", "-e", "integration")
    assert [s["id"] for s in earlier["syncs"]] == [interrupted]
    future = await ctl("status", "--since", "2999-01-01")
    assert future.stdout == "No sync operations found matching the criteria\n"
    bad_since = await ctl("status", "--since", "soon")
    assert bad_since.code == 2 and "argument --since" in bad_since.stderr

    # show: the whole message, traceId included, which the table cuts.
    table = await ctl("status", "-f")
    assert timed_out in table.stdout and trace not in table.stdout
    shown = await ctl("show", timed_out[:8])
    assert shown.code == 0, shown.stderr
    assert shown.stdout.splitlines()[-2:] == ["Error message:", f"  {long_message}"]
    assert "Status:             timed_out" in shown.stdout
    as_json = await ctl.json("show", timed_out)
    assert as_json["error_message"] == long_message and as_json["credential_id"] == good
    ctl.assert_no_secret("cs.WRONG-302")
