"""Protocol-contract tests: the real `stsyncctl` subprocess against a canned protocol server.

The server (fake_daemon.py) is not stsyncd: it pins what the CLI sends (paths, query strings,
bodies) and how it shows what comes back (tables, NDJSON progress, JSON output, exit codes).
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sys
from pathlib import Path

from .conftest import STSYNCCTL, cli_env, run_cli
from .fake_daemon import (
    CRED_A,
    CRED_B,
    LONG_ERROR,
    RUN_ID,
    SYNC_FAILED,
    SYNC_OK,
    SYNC_RUNNING,
    TRACE_ID,
    UNKNOWN,
    FakeDaemon,
    dead_letters_document,
)


def sock(daemon: FakeDaemon) -> list[str]:
    return ["--socket", str(daemon.socket)]


# -- status -----------------------------------------------------------------------------------


async def test_status_table_and_summary(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), "status")
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    header = lines[0].split()
    assert header[:4] == ["ID", "Company", "Environment", "Data"]
    assert "Error" in header
    assert SYNC_RUNNING in lines[1] and "Running" in lines[1]
    assert "Summary" in result.stdout and "Success rate:      50.0%" in result.stdout
    assert "  Dead letters:      3 open (stsyncctl dead-letters)" in lines
    seen = fake_daemon.last()
    assert (seen.method, seen.path, seen.query) == ("GET", "/v1/status", {"limit": "50"})


async def test_status_narrow_terminal_drops_environment_and_error(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), "status", env=cli_env(COLUMNS="130"))
    header = result.stdout.splitlines()[0]
    assert "Environment" not in header and "Error" not in header
    assert "Failed" in header


async def test_status_filters_reach_the_daemon(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(
        *sock(fake_daemon), "status", "-c", "1042", "-r", "--last-24h", "--limit", "5"
    )
    assert result.code == 0
    assert fake_daemon.last().query == {
        "company_id": "1042",
        "running_only": "true",
        "last_24h": "true",
        "limit": "5",
    }
    assert SYNC_RUNNING in result.stdout and SYNC_OK not in result.stdout
    failed = await run_cli(*sock(fake_daemon), "status", "--failed-only")
    assert fake_daemon.last().query == {"failed_only": "true", "limit": "50"}
    assert SYNC_FAILED in failed.stdout and SYNC_OK not in failed.stdout


async def test_status_empty(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), "status", "-c", "nobody")
    assert result.code == 0
    assert result.stdout == "No sync operations found matching the criteria\n"


async def test_status_shows_open_dead_letters_only_when_there_are_some(
    fake_daemon: FakeDaemon,
) -> None:
    bolt = await run_cli(*sock(fake_daemon), "status", "-c", "2077")
    assert bolt.code == 0
    assert "  Dead letters:      1 open (stsyncctl dead-letters)" in bolt.stdout.splitlines()
    nothing_running = await run_cli(*sock(fake_daemon), "status", "-c", "2077", "-r")
    assert nothing_running.stdout == (
        "No sync operations found matching the criteria\n"
        "1 open dead letter: see `stsyncctl dead-letters`\n"
    )
    as_json = await run_cli(*sock(fake_daemon), "--json-output", "status", "-c", "1042")
    assert json.loads(as_json.stdout)["summary"]["dead_letters"] == 1


async def test_status_json_is_the_daemons_document(fake_daemon: FakeDaemon) -> None:
    for argv in (["--json-output", "status"], ["status", "--json-output"]):
        result = await run_cli(*sock(fake_daemon), *argv)
        assert result.code == 0 and result.stderr == ""
        document = json.loads(result.stdout)
        assert set(document) == {"syncs", "summary"}
        assert [s["id"] for s in document["syncs"]] == [SYNC_RUNNING, SYNC_OK, SYNC_FAILED]
        for key in (
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
        ):
            assert key in document["syncs"][0]
        assert document["summary"]["total_syncs"] == 3
        assert document["summary"]["dead_letters"] == 3


async def test_socket_from_the_environment(fake_daemon: FakeDaemon) -> None:
    result = await run_cli("health", env=cli_env(STSYNC_SOCKET=str(fake_daemon.socket)))
    assert result.code == 0, result.stderr
    assert "Uptime:" in result.stdout and "1h 02m" in result.stdout


async def test_health_exits_1_unless_the_daemon_can_do_all_of_its_work(
    fake_daemon: FakeDaemon,
) -> None:
    fake_daemon.outcome = "degraded"
    result = await run_cli(*sock(fake_daemon), "health")
    assert result.code == 1, result.stderr
    assert "Status:" in result.stdout and "degraded" in result.stdout
    assert "PostgreSQL is unreachable" in result.stdout
    as_json = await run_cli(*sock(fake_daemon), "--json-output", "health")
    assert as_json.code == 1 and '"problems"' in as_json.stdout


# -- process and retry ------------------------------------------------------------------------


async def test_process_streams_progress_and_fails_with_1_when_a_sync_failed(
    fake_daemon: FakeDaemon,
) -> None:
    result = await run_cli(*sock(fake_daemon), "process", "-e", "production", "-d", "customers")
    assert result.code == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Found 2 credentials to process"
    assert "Completed sync for Acme HVAC (production, customers): 1500 records processed" in lines
    assert any(
        line.startswith("Sync failed for Bolt Plumbing (integration, invoices): ServiceTitan")
        for line in lines
    )
    # Not a terminal: plain progress lines, no carriage returns or escape sequences.
    assert "Started sync for Acme HVAC (production, customers) (incremental)" in lines
    assert any("500 records, 1 pages, 250.0 records/s" in line for line in lines)
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    assert "Syncs:             2 (1 successful, 1 failed)" in result.stdout
    assert fake_daemon.last().body == {
        "environment": "production",
        "data_type": "customers",
        "dry_run": False,
        "estimate": False,
        "full": False,
        "include_errored": True,
    }


async def test_process_all_ok_exits_0(fake_daemon: FakeDaemon) -> None:
    fake_daemon.outcome = "ok"
    result = await run_cli(
        *sock(fake_daemon),
        "process",
        "-c",
        "1042",
        "--credential-id",
        CRED_A,
        "--max-concurrent",
        "5",
        "-t",
        "600",
        "--full",
    )
    assert result.code == 0, result.stderr
    body = fake_daemon.last().body
    assert body["company_id"] == "1042" and body["credential_id"] == CRED_A
    assert body["max_concurrent"] == 5 and body["timeout_seconds"] == 600 and body["full"] is True


async def test_process_nothing_to_do(fake_daemon: FakeDaemon) -> None:
    fake_daemon.outcome = "empty"
    result = await run_cli(*sock(fake_daemon), "process")
    assert result.code == 0
    assert result.stdout.splitlines()[0] == "No credentials found matching the criteria"


async def test_process_json_output_is_only_the_summary(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), "--json-output", "process")
    assert result.code == 1
    summary = json.loads(result.stdout)
    assert summary["total_credentials"] == 2
    assert summary["successful_syncs"] == 1 and summary["failed_syncs"] == 1
    assert summary["total_records_processed"] == 1500
    assert summary["execution_time_seconds"] == 12.5
    assert [s["id"] for s in summary["syncs"]] == [SYNC_OK, SYNC_FAILED]
    assert result.stderr == ""  # stderr is not a terminal: progress omitted


async def test_dry_run_prints_the_plan(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(
        *sock(fake_daemon), "process", "--dry-run", "--estimate", "-e", "integration"
    )
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[0] == "Found 1 credentials to process"
    header = result.stdout.splitlines()[2]
    for column in ("Company", "Environment", "Data Type", "Mode", "Resume From", "Estimated"):
        assert column in header
    assert "Dry run: nothing was synced or written." in result.stdout
    assert fake_daemon.last().body["dry_run"] is True
    assert fake_daemon.last().body["estimate"] is True
    assert fake_daemon.last().body["environment"] == "integration"

    as_json = await run_cli(*sock(fake_daemon), "process", "--dry-run", "--json-output")
    plan = json.loads(as_json.stdout)
    assert plan["dry_run"] is True and len(plan["items"]) == 2


async def test_retry_messages_and_body(fake_daemon: FakeDaemon) -> None:
    fake_daemon.outcome = "ok"
    result = await run_cli(
        *sock(fake_daemon), "retry", "-m", "12", "--max-retries", "3", "--exclude-auth-errors"
    )
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[0] == "Found 1 failed syncs to retry"
    seen = fake_daemon.last()
    assert seen.path == "/v1/retry"
    assert seen.body == {
        "max_age_hours": 12.0,
        "max_retries": 3,
        "exclude_auth_errors": True,
        "dry_run": False,
    }
    dry = await run_cli(*sock(fake_daemon), "retry", "--dry-run")
    assert dry.code == 0 and dry.stdout.startswith("Found 2 failed syncs to retry")


async def test_retry_json_output(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), "retry", "--json-output")
    assert result.code == 1
    assert json.loads(result.stdout)["action"] == "retry"


async def test_run_error_event_exits_1(fake_daemon: FakeDaemon) -> None:
    fake_daemon.outcome = "broken"
    result = await run_cli(*sock(fake_daemon), "process")
    assert result.code == 1
    assert result.stderr.strip().splitlines() == [
        "stsyncctl: the run failed in the daemon: the database went away "
        "(journalctl -u stsync.service)"
    ]


async def test_stream_cut_short_is_exit_3(fake_daemon: FakeDaemon) -> None:
    fake_daemon.outcome = "cut"
    result = await run_cli(*sock(fake_daemon), "--json-output", "process")
    assert result.code == 3
    assert result.stdout == ""
    assert "closed the stream before the run finished" in result.stderr


async def test_interrupt_exits_130_and_says_the_run_goes_on(fake_daemon: FakeDaemon) -> None:
    fake_daemon.outcome = "slow"
    proc = await asyncio.create_subprocess_exec(
        str(STSYNCCTL),
        *sock(fake_daemon),
        "process",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert first == b"Found 2 credentials to process\n"
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    assert err.decode() == (
        f"stsyncctl: interrupted; run {RUN_ID} goes on in the daemon "
        f"(cancel it with: stsyncctl cancel {RUN_ID})\n"
    )
    assert b"Traceback" not in out + err


async def test_progress_on_a_terminal_uses_carriage_returns(fake_daemon: FakeDaemon) -> None:
    """Under a pseudo-terminal the running syncs are redrawn in place."""
    fake_daemon.outcome = "ok"
    leader, follower = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        str(STSYNCCTL),
        *sock(fake_daemon),
        "process",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=cli_env(),
    )
    os.close(follower)
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = loop.run_in_executor(None, read)
    await asyncio.wait_for(proc.wait(), 30)
    await asyncio.wait_for(reader, 30)
    os.close(leader)
    text = b"".join(chunks).decode()
    assert proc.returncode == 0, text
    assert "\r" in text and "\x1b[" in text
    assert "Completed sync for Acme HVAC (production, customers): 1500 records processed" in text


# -- credentials ------------------------------------------------------------------------------

ADD = [
    "credentials",
    "add",
    "--company-id",
    "1042",
    "--company-name",
    "Acme HVAC",
    "-e",
    "production",
    "--tenant-id",
    "123456789",
    "--client-id",
    "cid.acme",
]
SECRET = "cs.VERY-SECRET-VALUE"


async def test_credentials_add_from_stdin_never_prints_the_secret(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), *ADD, stdin=SECRET + "\n")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"Added credential {CRED_B} for Acme HVAC (production")
    assert SECRET not in result.stdout + result.stderr
    body = fake_daemon.last().body
    assert body["client_secret"] == SECRET and "app_key" not in body
    assert body["schedule_enabled"] is True and body["tenant_id"] == 123456789
    as_json = await run_cli(*sock(fake_daemon), "--json-output", *ADD, stdin=SECRET)
    assert SECRET not in as_json.stdout
    assert json.loads(as_json.stdout)["id"] == CRED_B


async def test_credentials_add_from_files(fake_daemon: FakeDaemon, short_tmp: Path) -> None:
    secret, key = short_tmp / "secret", short_tmp / "key"
    secret.write_text(SECRET + "\n")
    key.write_text("ak1.KEY\n")
    result = await run_cli(
        *sock(fake_daemon),
        *ADD,
        "--client-secret-file",
        str(secret),
        "--app-key-file",
        str(key),
        "--no-schedule",
    )
    assert result.code == 0, result.stderr
    body = fake_daemon.last().body
    assert body["client_secret"] == SECRET and body["app_key"] == "ak1.KEY"
    assert body["schedule_enabled"] is False
    assert SECRET not in result.stdout + result.stderr and "ak1.KEY" not in result.stdout


async def test_credentials_add_empty_secret_is_a_usage_error(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), *ADD, stdin="")
    assert result.code == 2
    assert result.stderr.splitlines()[-1].endswith(
        "argument --client-secret-file: the secret from standard input is empty"
    )
    assert fake_daemon.seen == []  # nothing was sent


async def test_credentials_conflict_exits_1_with_the_daemons_message(
    fake_daemon: FakeDaemon,
) -> None:
    argv = list(ADD)
    argv[argv.index("1042")] = "dup"
    result = await run_cli(*sock(fake_daemon), *argv, stdin=SECRET)
    assert result.code == 1
    assert result.stderr == "stsyncctl: a credential for tenant 123 already exists\n"
    assert result.stdout == ""


async def test_credentials_list_show_update_enable_disable(fake_daemon: FakeDaemon) -> None:
    listing = await run_cli(*sock(fake_daemon), "credentials", "list")
    assert listing.code == 0
    assert CRED_A in listing.stdout and "Bolt Plumbing" in listing.stdout
    assert listing.stdout.rstrip().endswith("2 credentials")

    show = await run_cli(*sock(fake_daemon), "credentials", "show", CRED_A)
    assert show.code == 0 and "Client ID:" in show.stdout and "never shown" in show.stdout

    update = await run_cli(
        *sock(fake_daemon),
        "credentials",
        "update",
        CRED_A,
        "--company-name",
        "Acme Heating",
        "--no-schedule",
    )
    assert update.code == 0, update.stderr
    seen = fake_daemon.last()
    assert (seen.method, seen.path) == ("PATCH", f"/v1/credentials/{CRED_A}")
    assert seen.body == {
        "company_name": "Acme Heating",
        "schedule_enabled": False,
        "clear_app_key": False,
    }

    disable = await run_cli(*sock(fake_daemon), "credentials", "disable", CRED_A)
    assert (
        disable.stdout.startswith(f"Disabled credential {CRED_A}") and "disabled" in disable.stdout
    )
    assert fake_daemon.last().path == f"/v1/credentials/{CRED_A}/disable"
    enable = await run_cli(*sock(fake_daemon), "credentials", "enable", CRED_A)
    assert enable.stdout.startswith(f"Enabled credential {CRED_A}")


async def test_unknown_credential_exits_1(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), "credentials", "show", UNKNOWN)
    assert result.code == 1
    assert result.stderr == f"stsyncctl: no credential with id {UNKNOWN}\n"


async def test_credentials_test_ok_and_failed(fake_daemon: FakeDaemon) -> None:
    ok = await run_cli(*sock(fake_daemon), "credentials", "test", CRED_A)
    assert ok.code == 0 and ok.stdout.startswith("OK: ServiceTitan accepted")
    bad = await run_cli(*sock(fake_daemon), "credentials", "test", CRED_B)
    assert bad.code == 1
    assert bad.stdout == "FAILED: ServiceTitan rejected the client id or secret\n"
    as_json = await run_cli(*sock(fake_daemon), "--json-output", "credentials", "test", CRED_B)
    assert as_json.code == 1 and json.loads(as_json.stdout)["ok"] is False


async def test_credentials_remove_without_a_terminal_does_not_ask(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), "credentials", "remove", CRED_A)
    assert result.code == 0
    assert result.stdout == f"Removed credential {CRED_A} (its history is kept)\n"
    assert (fake_daemon.last().method, fake_daemon.last().path) == (
        "DELETE",
        f"/v1/credentials/{CRED_A}",
    )
    as_json = await run_cli(
        *sock(fake_daemon), "credentials", "remove", "-y", CRED_A, "--json-output"
    )
    assert json.loads(as_json.stdout) == {"removed": CRED_A}


async def test_credentials_remove_asks_on_a_terminal(fake_daemon: FakeDaemon) -> None:
    """With standard input on a pseudo-terminal, "n" keeps the credential (exit 1)."""
    leader, follower = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        str(STSYNCCTL),
        *sock(fake_daemon),
        "credentials",
        "remove",
        CRED_A,
        stdin=follower,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    os.close(follower)
    os.write(leader, b"n\n")
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    os.close(leader)
    assert proc.returncode == 1
    assert out == b""
    assert "Remove credential" in err.decode() and "[y/N]" in err.decode()
    assert "not removed" in err.decode()
    assert [s.method for s in fake_daemon.seen] == ["GET"]


# -- schedules, runs, cancel, report ----------------------------------------------------------


async def test_schedules_runs_report(fake_daemon: FakeDaemon) -> None:
    schedules = await run_cli(*sock(fake_daemon), "schedules")
    assert schedules.code == 0
    assert "hourly-production" in schedules.stdout and "0 * * * *" in schedules.stdout
    runs = await run_cli(*sock(fake_daemon), "runs", "--limit", "5")
    assert runs.code == 0 and RUN_ID in runs.stdout and "Running" in runs.stdout
    assert fake_daemon.last().query == {"limit": "5"}
    report = await run_cli(*sock(fake_daemon), "report", "--last-24h")
    assert report.code == 0 and report.stdout.startswith("Report of the last 24 hours")
    assert fake_daemon.last().query == {"hours": "24"}
    week = await run_cli(*sock(fake_daemon), "--json-output", "report", "--hours", "168")
    assert json.loads(week.stdout)["hours"] == 168
    assert fake_daemon.last().query == {"hours": "168"}


async def test_cancel(fake_daemon: FakeDaemon) -> None:
    done = await run_cli(*sock(fake_daemon), "cancel", RUN_ID)
    assert done.code == 0 and done.stdout.startswith(f"Cancelled run {RUN_ID}")
    missing = await run_cli(*sock(fake_daemon), "cancel", UNKNOWN)
    assert missing.code == 1
    assert missing.stderr == f"stsyncctl: no running run or sync with id {UNKNOWN}\n"


# -- dead letters -----------------------------------------------------------------------------


async def test_dead_letters_table_and_count(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), "dead-letters")
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "Company",
        "Environment",
        "Data",
        "Type",
        "Record",
        "ID",
        "Reason",
        "Created",
        "Resolved",
    ]
    rows = [line.split() for line in lines[1:4]]
    assert [row[0] for row in rows] == ["4", "3", "2"]  # newest first, open ones only
    assert rows[0][1:5] == ["-", "production", "invoices", "777"]  # its credential was removed
    assert rows[1][1:6] == ["Acme", "HVAC", "production", "customers", "98765"]
    assert rows[2][-3:] == ["2024-05-01", "10:00:03", "-"]  # created, and still open
    assert "the record is not valid UTF-8" in lines[3]
    assert lines[4:] == ["", "3 open dead letters (showing 3)"]
    seen = fake_daemon.last()
    assert (seen.method, seen.path, seen.query) == ("GET", "/v1/dead-letters", {"limit": "50"})


async def test_dead_letters_reason_is_clipped_to_the_width(fake_daemon: FakeDaemon) -> None:
    for columns in (200, 120, 100):
        result = await run_cli(
            *sock(fake_daemon), "dead-letters", env=cli_env(COLUMNS=str(columns))
        )
        assert result.code == 0
        lines = result.stdout.splitlines()
        assert all(len(line) <= columns for line in lines), (columns, lines)
        acme = next(line for line in lines if "98765" in line)
        assert "the record cannot be" in acme and "..." in acme
        assert "2024-05-01 10:00:40" in acme
    assert "Environment" not in lines[0]  # dropped at 100 columns, the reason kept


async def test_dead_letters_filters_reach_the_daemon(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(
        *sock(fake_daemon),
        "dead-letters",
        "-c",
        "1042",
        "--credential-id",
        CRED_A,
        "-e",
        "production",
        "-d",
        "customers",
        "--all",
        "--limit",
        "5",
    )
    assert result.code == 0, result.stderr
    assert fake_daemon.last().query == {
        "company_id": "1042",
        "credential_id": CRED_A,
        "environment": "production",
        "data_type": "customers",
        "include_resolved": "true",
        "limit": "5",
    }
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["3", "1"]
    assert "2024-05-01 10:01:30" in lines[2]  # when it was resolved
    assert lines[-1] == "2 dead letters (showing 2)"

    both = await run_cli(*sock(fake_daemon), "dead-letters", "-d", "both", "-e", "integration")
    assert fake_daemon.last().query == {"environment": "integration", "limit": "50"}
    assert both.stdout.splitlines()[-1] == "1 open dead letter (showing 1)"
    page = await run_cli(*sock(fake_daemon), "dead-letters", "--limit", "1")
    assert page.stdout.splitlines()[-1] == "3 open dead letters (showing 1)"


async def test_dead_letters_json_is_the_daemons_document(fake_daemon: FakeDaemon) -> None:
    for argv in (
        ["--json-output", "dead-letters", "--all"],
        ["dead-letters", "--all", "--json-output"],
    ):
        result = await run_cli(*sock(fake_daemon), *argv)
        assert result.code == 0 and result.stderr == ""
        document = json.loads(result.stdout)
        assert document == dead_letters_document({"include_resolved": "true"})
        assert document["total"] == 4 and len(document["dead_letters"]) == 4
        assert set(document["dead_letters"][0]) == {
            "id",
            "sync_id",
            "credential_id",
            "company_id",
            "company",
            "environment",
            "tenant_id",
            "data_type",
            "record_id",
            "reason",
            "raw",
            "created_at",
            "resolved_at",
        }


async def test_dead_letters_none_is_exit_0(fake_daemon: FakeDaemon) -> None:
    result = await run_cli(*sock(fake_daemon), "dead-letters", "-c", "nobody")
    assert (result.code, result.stdout) == (0, "No open dead letters found matching the criteria\n")
    everything = await run_cli(*sock(fake_daemon), "dead-letters", "-c", "nobody", "--all")
    assert everything.stdout == "No dead letters found matching the criteria\n"
    as_json = await run_cli(*sock(fake_daemon), "--json-output", "dead-letters", "-c", "nobody")
    assert as_json.code == 0
    assert json.loads(as_json.stdout) == {"dead_letters": [], "total": 0}


# -- refusals ---------------------------------------------------------------------------------


async def test_forbidden_by_the_peer_check_is_exit_3(fake_daemon: FakeDaemon) -> None:
    fake_daemon.mode = "forbidden"
    for argv in (["status"], ["--json-output", "process"], ["credentials", "list"]):
        result = await run_cli(*sock(fake_daemon), *argv)
        assert result.code == 3
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert "refused this user" in line and "stsync group" in line


async def test_unavailable_daemon_is_exit_3(fake_daemon: FakeDaemon) -> None:
    fake_daemon.mode = "unavailable"
    result = await run_cli(*sock(fake_daemon), "status")
    assert result.code == 3
    assert result.stderr.splitlines() == [
        f"stsyncctl: the daemon on {fake_daemon.socket} cannot serve now: "
        "database unavailable: connection refused"
    ]


async def test_module_entry_point(fake_daemon: FakeDaemon) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stsync_daemon.cli.stsyncctl",
        *sock(fake_daemon),
        "health",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
        cwd=Path(__file__).resolve().parents[2],
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and b"Status:" in out


# -- at scale: id prefixes, filters, show, quiet, utc (issue 14) ------------------------------


async def test_show_prints_the_whole_error_message_that_the_table_cuts(
    fake_daemon: FakeDaemon,
) -> None:
    table = await run_cli(*sock(fake_daemon), "status", "--failed-only")
    assert SYNC_FAILED in table.stdout and TRACE_ID not in table.stdout
    shown = await run_cli(*sock(fake_daemon), "show", SYNC_FAILED)
    assert shown.code == 0, shown.stderr
    assert fake_daemon.last().path == f"/v1/syncs/{SYNC_FAILED}"
    lines = shown.stdout.splitlines()
    assert lines[0] == f"ID:                 {SYNC_FAILED}"
    assert "Status:             failed" in lines
    assert "Company:            Bolt Plumbing (2077)" in lines
    assert lines[-2:] == ["Error message:", f"  {LONG_ERROR}"]
    as_json = await run_cli(*sock(fake_daemon), "show", SYNC_FAILED, "--json-output")
    assert json.loads(as_json.stdout)["error_message"] == LONG_ERROR
    ok = await run_cli(*sock(fake_daemon), "show", SYNC_OK)
    assert ok.stdout.splitlines()[-1] == "Error message:      -"


async def test_show_by_prefix_ambiguous_and_unknown(fake_daemon: FakeDaemon) -> None:
    running = await run_cli(*sock(fake_daemon), "show", SYNC_RUNNING.replace("-", "").upper())
    assert running.code == 0 and f"ID:                 {SYNC_RUNNING}" in running.stdout
    assert "Completed:          Running" in running.stdout
    ambiguous = await run_cli(*sock(fake_daemon), "show", "0000")
    assert ambiguous.code == 1 and ambiguous.stdout == ""
    assert ambiguous.stderr == (
        "stsyncctl: id prefix 0000 is ambiguous: 3 syncs match; give more of its digits\n"
    )
    unknown = await run_cli(*sock(fake_daemon), "show", "ffff")
    assert unknown.code == 1 and unknown.stderr == "stsyncctl: no sync id starts with ffff\n"
    short = await run_cli(*sock(fake_daemon), "show", "000")
    assert short.code == 2 and "at least its first 4 hex digits" in short.stderr


async def test_credential_commands_take_a_prefix_and_print_the_whole_id(
    fake_daemon: FakeDaemon,
) -> None:
    show = await run_cli(*sock(fake_daemon), "credentials", "show", "AAAA")
    assert show.code == 0 and "ID:" in show.stdout and CRED_A in show.stdout
    assert fake_daemon.last().path == "/v1/credentials/aaaa"
    enable = await run_cli(*sock(fake_daemon), "credentials", "enable", "aaaa")
    assert enable.stdout.startswith(f"Enabled credential {CRED_A} for Acme HVAC")
    update = await run_cli(*sock(fake_daemon), "credentials", "update", "aaaa", "--schedule")
    assert update.stdout.startswith(f"Updated credential {CRED_A}\n")
    removed = await run_cli(*sock(fake_daemon), "credentials", "remove", "bbbbbbbb-b")
    assert removed.stdout == f"Removed credential {CRED_B} (its history is kept)\n"
    tested = await run_cli(*sock(fake_daemon), "credentials", "test", "bbbbbbbb")
    assert tested.code == 1 and tested.stdout.startswith("FAILED: ")
    cancelled = await run_cli(*sock(fake_daemon), "cancel", RUN_ID[:8])
    assert cancelled.stdout.startswith(f"Cancelled run {RUN_ID};")


async def test_credentials_list_filters_reach_the_daemon(fake_daemon: FakeDaemon) -> None:
    errors = await run_cli(
        *sock(fake_daemon), "credentials", "list", "--status", "error", "-e", "integration"
    )
    assert errors.code == 0
    assert fake_daemon.last().query == {"status": "error", "environment": "integration"}
    assert CRED_B in errors.stdout and CRED_A not in errors.stdout
    assert errors.stdout.rstrip().endswith("1 credentials")
    none = await run_cli(
        *sock(fake_daemon), "credentials", "list", "--company-id", "1042", "--status", "error"
    )
    assert none.code == 0
    assert none.stdout == "No credentials found matching the criteria\n"


async def test_status_run_environment_data_type_since_reach_the_daemon(
    fake_daemon: FakeDaemon,
) -> None:
    result = await run_cli(
        *sock(fake_daemon),
        "status",
        "--run",
        RUN_ID[:4],
        "-e",
        "production",
        "-d",
        "invoices",
        "--since",
        "2024-05-01T06:00:00Z",
    )
    assert result.code == 0, result.stderr
    assert fake_daemon.last().query == {
        "run_id": "1111",
        "environment": "production",
        "data_type": "invoices",
        "since": "2024-05-01T06:00:00Z",
        "limit": "50",
    }
    assert SYNC_RUNNING in result.stdout and SYNC_OK not in result.stdout
    unknown = await run_cli(*sock(fake_daemon), "status", "--run", "2222")
    assert unknown.code == 1 and unknown.stderr == "stsyncctl: no run id starts with 2222\n"


async def test_quiet_process_and_retry_say_nothing_unless_something_failed(
    fake_daemon: FakeDaemon,
) -> None:
    fake_daemon.outcome = "ok"
    for argv in (["process", "-q"], ["retry", "--quiet"], ["process", "-q", "--dry-run"]):
        quiet = await run_cli(*sock(fake_daemon), *argv)
        assert (quiet.code, quiet.stdout, quiet.stderr) == (0, "", ""), argv
    fake_daemon.outcome = "mixed"
    failed = await run_cli(*sock(fake_daemon), "process", "-q")
    assert failed.code == 1 and failed.stdout == ""
    assert failed.stderr.splitlines() == [
        "stsyncctl: Sync failed for Bolt Plumbing (integration, invoices): ServiceTitan rejected "
        "the client id or secret: check them with `stsyncctl credentials test`",
        f"stsyncctl: run {RUN_ID} completed: 1 of 2 syncs failed (stsyncctl status --run {RUN_ID})",
    ]
    fake_daemon.outcome = "broken"
    broken = await run_cli(*sock(fake_daemon), "retry", "-q")
    assert broken.code == 1 and broken.stdout == ""
    assert "the database went away" in broken.stderr


async def test_utc_shows_times_in_utc_instead_of_local_time(fake_daemon: FakeDaemon) -> None:
    tokyo = cli_env(TZ="JST-9")
    local = await run_cli(*sock(fake_daemon), "status", env=tokyo)
    assert "2024-05-01 19:00:00" in local.stdout and "2024-05-01 10:00:00" not in local.stdout
    for argv in (["--utc", "status"], ["status", "--utc"]):
        utc = await run_cli(*sock(fake_daemon), *argv, env=tokyo)
        assert "2024-05-01 10:00:00" in utc.stdout and "2024-05-01 19:00:00" not in utc.stdout
    shown = await run_cli(*sock(fake_daemon), "--utc", "show", SYNC_OK, env=tokyo)
    assert "Started:            2024-05-01 10:00:00" in shown.stdout
    as_json = await run_cli(*sock(fake_daemon), "--utc", "--json-output", "status", env=tokyo)
    assert json.loads(as_json.stdout)["syncs"][1]["started_at"] == "2024-05-01T10:00:00Z"
