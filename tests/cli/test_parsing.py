"""Unit tests of stsyncctl's command line: every command, option and short form; usage errors."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stsync_daemon.cli import stsyncctl
from stsync_daemon.cli.parser import build_parser, command_path
from stsync_daemon.cli.requests import UsageError, parse_when, query_params, read_secret, wire
from stsync_daemon.cli.stsyncctl import socket_path
from stsync_daemon.control.protocol import (
    CredentialAdd,
    CredentialsQuery,
    CredentialUpdate,
    DeadLettersQuery,
    ProcessRequest,
    RetryRequest,
    StatusQuery,
)
from stsync_daemon.enums import CredentialStatus, DataTypeFilter, Environment

CRED = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def prepare(*argv: str, stdin: str = "") -> Any:
    args = parse(*argv)
    build = stsyncctl.COMMANDS[command_path(args)].prepare
    assert build is not None, argv
    return build(args, io.StringIO(stdin))


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run main() expecting exit 2; return the error line (usage lines come before it)."""
    with pytest.raises(SystemExit) as raised:
        stsyncctl.main(list(argv))
    assert raised.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith("usage: stsyncctl")
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, captured.err
    assert lines[-1] == errors[0]
    return errors[0]


# -- global options ---------------------------------------------------------------------------


def test_json_output_is_accepted_before_and_after_the_command() -> None:
    assert parse("--json-output", "status").json_output is True
    assert parse("status", "--json-output").json_output is True
    assert parse("credentials", "list", "--json-output").json_output is True
    assert parse("status").json_output is False


def test_socket_option_then_environment_then_the_daemons_default(tmp_path: Path) -> None:
    assert socket_path(parse("--socket", "/x.sock", "status"), {}) == Path("/x.sock")
    assert socket_path(parse("status", "--socket", "/y.sock"), {}) == Path("/y.sock")
    env = {"STSYNC_SOCKET": "/env.sock"}
    assert socket_path(parse("status"), env) == Path("/env.sock")
    assert socket_path(parse("--socket", "/x.sock", "status"), env) == Path("/x.sock")
    assert socket_path(parse("status"), {}) == Path("/run/stsync/control.sock")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        stsyncctl.main(["--version"])
    assert raised.value.code == 0
    assert capsys.readouterr().out.startswith("stsyncctl ")


COMMANDS = [
    ["process"],
    ["status"],
    ["retry"],
    ["credentials"],
    ["credentials", "list"],
    ["credentials", "show"],
    ["credentials", "add"],
    ["credentials", "update"],
    ["credentials", "enable"],
    ["credentials", "disable"],
    ["credentials", "remove"],
    ["credentials", "test"],
    ["schedules"],
    ["schedules", "pause"],
    ["schedules", "resume"],
    ["runs"],
    ["cancel"],
    ["show"],
    ["report"],
    ["dead-letters"],
    ["health"],
]


def leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> set[tuple[str, ...]]:
    """Every command path the parser accepts: those without subcommands, and those whose
    subcommand is optional (`schedules` alone lists them)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = set().union(
                *(leaf_commands(sub, (*path, name)) for name, sub in action.choices.items())
            )
            return found if action.required else found | {path}
    return {path}


def test_every_command_the_parser_accepts_is_bound_to_a_handler_and_no_other() -> None:
    assert leaf_commands(build_parser()) == set(stsyncctl.COMMANDS)
    assert len(stsyncctl.COMMANDS) == len(COMMANDS) - 1  # "credentials" itself runs nothing


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_examples_and_exit_codes(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        stsyncctl.main([*command, "--help"])
    assert raised.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text
    assert "exit codes:" in text
    for code in ("0 ", "1 ", "2 ", "3 "):
        assert f"\n  {code}" in text
    assert "--json-output" in text


# -- process ----------------------------------------------------------------------------------


def test_process_defaults() -> None:
    request = prepare("process")
    assert request == ProcessRequest()
    assert request.data_type is DataTypeFilter.BOTH
    # Concurrency and timeout default to the daemon's configuration (3 and 3600 out of the box).
    assert request.max_concurrent is None and request.timeout_seconds is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-e", "integration"], {"environment": Environment.INTEGRATION}),
        (["--environment", "production"], {"environment": Environment.PRODUCTION}),
        (["-c", "1042"], {"company_id": "1042"}),
        (["--company-id", "1042"], {"company_id": "1042"}),
        (["--credential-id", CRED], {"credential_id": CRED}),
        (["--credential-id", "AAAA"], {"credential_id": "aaaa"}),
        (["--credential-id", "aaaaaaaa-aa"], {"credential_id": "aaaaaaaaaa"}),
        (["-d", "customers"], {"data_type": DataTypeFilter.CUSTOMERS}),
        (["--data-type", "invoices"], {"data_type": DataTypeFilter.INVOICES}),
        (["--data-type", "both"], {"data_type": DataTypeFilter.BOTH}),
        (["--dry-run"], {"dry_run": True}),
        (["--dry-run", "--estimate"], {"dry_run": True, "estimate": True}),
        (["--max-concurrent", "7"], {"max_concurrent": 7}),
        (["-t", "90"], {"timeout_seconds": 90.0}),
        (["--timeout", "1.5"], {"timeout_seconds": 1.5}),
        (["--full"], {"full": True}),
    ],
)
def test_process_options(argv: list[str], expected: dict[str, Any]) -> None:
    request = prepare("process", *argv)
    for key, value in expected.items():
        assert getattr(request, key) == value


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["process", "-e", "staging"], "-e/--environment"),
        (["process", "-d", "jobs"], "-d/--data-type"),
        (["process", "--max-concurrent", "0"], "--max-concurrent"),
        (["process", "--max-concurrent", "three"], "--max-concurrent"),
        (["process", "-t", "-5"], "-t/--timeout"),
        (["process", "--timeout", "soon"], "-t/--timeout"),
        (["process", "--credential-id", "42"], "--credential-id"),
        (["process", "--estimate"], "--estimate"),
        (["process", "--bogus"], "--bogus"),
        (["status", "--limit", "0"], "--limit"),
        (["status", "--limit", "x"], "--limit"),
        (["status", "-r", "-f"], "-f/--failed-only"),
        (["retry", "-m", "0"], "-m/--max-age"),
        (["retry", "--max-retries", "-1"], "--max-retries"),
        (["runs", "--limit", "0"], "--limit"),
        (["cancel", "not-an-id"], "RUN_OR_SYNC_ID"),
        (["cancel", "abc"], "RUN_OR_SYNC_ID"),
        (["show", "abc"], "SYNC_ID"),
        (["show", "zzzz"], "SYNC_ID"),
        (["show", "ab-cd"], "SYNC_ID"),
        (["status", "--run", "12"], "--run"),
        (["status", "--since", "yesterday"], "--since"),
        (["status", "--since", "2h", "--last-24h"], "--last-24h"),
        (["status", "-e", "staging"], "-e/--environment"),
        (["status", "-d", "both"], "-d/--data-type"),
        (["credentials", "list", "--status", "broken"], "--status"),
        (["credentials", "enable", "aaa"], "CREDENTIAL_ID"),
        (["process", "-q", "--json-output"], "-q/--quiet"),
        (["--json-output", "retry", "--quiet"], "-q/--quiet"),
        (["report", "--hours", "0"], "--hours"),
        (["report", "--last-24h", "--hours", "3"], "--hours"),
        (["credentials", "show", "nope"], "CREDENTIAL_ID"),
        (["credentials", "add", "--company-id", "1"], "required"),
        (["credentials", "update", CRED], "nothing to change"),
        (["credentials", "update", CRED, "--tenant-id", "5"], "--tenant-id"),
        (["credentials", "update", CRED, "-e", "production"], "--environment"),
        (["credentials", "update", CRED, "--company-id", "7"], "--company-id"),
        (["credentials", "update", CRED, "--schedule", "--no-schedule"], "--no-schedule"),
        (["dead-letters", "--limit", "0"], "--limit"),
        (["dead-letters", "--limit", "10001"], "--limit"),
        (["dead-letters", "-d", "jobs"], "-d/--data-type"),
        (["dead-letters", "-e", "staging"], "-e/--environment"),
        (["dead-letters", "--credential-id", "42"], "--credential-id"),
        (["dead-letters", "-c", "x" * 201], "--company-id"),
        (["status", "-c", "a\x00b"], "--company-id"),
        (["nonsense"], "nonsense"),
    ],
)
def test_usage_errors_exit_2_with_one_line_naming_the_option(
    argv: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = usage_error(capsys, *argv)
    assert names in line


def test_usage_errors_show_the_commands_own_usage(capsys: pytest.CaptureFixture[str]) -> None:
    usage_error(capsys, "process", "--estimate")
    with pytest.raises(SystemExit):
        stsyncctl.main(["process", "--estimate"])
    assert capsys.readouterr().err.startswith("usage: stsyncctl process")


# -- status and retry -------------------------------------------------------------------------


def test_status_defaults_and_options() -> None:
    assert prepare("status") == StatusQuery()
    assert prepare("status", "-c", "7", "-r", "--last-24h", "--limit", "5") == StatusQuery(
        company_id="7", running_only=True, last_24h=True, limit=5
    )
    assert prepare("status", "--company-id", "7", "--running-only").running_only
    assert prepare("status", "-f").failed_only
    assert prepare("status", "--failed-only").failed_only


def test_status_new_filters() -> None:
    request = prepare(
        "status", "--run", "11112222-3", "-e", "production", "-d", "invoices", "--since", "2h"
    )
    assert request.run_id == "111122223"
    assert request.environment is Environment.PRODUCTION
    assert request.data_type == "invoices"
    assert request.since is not None
    ago = datetime.now(UTC) - request.since
    assert timedelta(hours=2) - timedelta(seconds=5) < ago < timedelta(hours=2, seconds=5)
    assert prepare("status", "--run", CRED).run_id == CRED
    # The query string carries the time in UTC with a `Z`.
    assert query_params(prepare("status", "--since", "2024-05-01T06:00:00+02:00"))["since"] == (
        "2024-05-01T04:00:00Z"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", datetime(2024, 5, 1, 11, 30, tzinfo=UTC)),
        ("2h", datetime(2024, 5, 1, 10, 0, tzinfo=UTC)),
        ("3d", datetime(2024, 4, 28, 12, 0, tzinfo=UTC)),
        ("1w", datetime(2024, 4, 24, 12, 0, tzinfo=UTC)),
        ("45s", datetime(2024, 5, 1, 11, 59, 15, tzinfo=UTC)),
        ("2024-04-30", datetime(2024, 4, 30, tzinfo=UTC)),
        ("2024-04-30T08:15", datetime(2024, 4, 30, 8, 15, tzinfo=UTC)),
        ("2024-04-30T08:15:00Z", datetime(2024, 4, 30, 8, 15, tzinfo=UTC)),
        ("2024-04-30T10:15:00+02:00", datetime(2024, 4, 30, 8, 15, tzinfo=UTC)),
    ],
)
def test_since_takes_iso_8601_or_a_time_ago(text: str, expected: datetime) -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_when(text, now=now, utc=True) == expected


def test_since_without_a_zone_is_local_time_unless_utc() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    local = parse_when("2024-04-30T08:15", now=now, utc=False)
    assert local == datetime(2024, 4, 30, 8, 15).astimezone()
    assert local.tzinfo is not None


def test_credentials_list_filters() -> None:
    assert prepare("credentials", "list") == CredentialsQuery()
    assert prepare(
        "credentials", "list", "--status", "error", "--environment", "production", "-c", "1042"
    ) == CredentialsQuery(
        status=CredentialStatus.ERROR, environment=Environment.PRODUCTION, company_id="1042"
    )


def test_quiet_and_utc() -> None:
    assert parse("process", "-q").quiet is True
    assert parse("retry", "--quiet").quiet is True
    assert parse("process").quiet is False
    assert parse("--utc", "status").utc is True
    assert parse("status", "--utc").utc is True
    assert parse("status").utc is False


def test_retry_defaults_and_options() -> None:
    assert prepare("retry") == RetryRequest(max_age_hours=24, max_retries=10)
    request = prepare(
        "retry", "-m", "12", "--max-retries", "3", "--exclude-auth-errors", "--dry-run"
    )
    assert request == RetryRequest(
        max_age_hours=12, max_retries=3, exclude_auth_errors=True, dry_run=True
    )
    assert prepare("retry", "--max-age", "0.5").max_age_hours == 0.5


def test_dead_letters_defaults_and_options() -> None:
    assert prepare("dead-letters") == DeadLettersQuery()
    assert prepare("dead-letters", "-d", "both") == DeadLettersQuery()
    assert prepare(
        "dead-letters",
        "-c",
        "1042",
        "--credential-id",
        CRED.upper(),
        "-e",
        "integration",
        "-d",
        "invoices",
        "--all",
        "--limit",
        "10000",
    ) == DeadLettersQuery(
        company_id="1042",
        credential_id=CRED,
        environment=Environment.INTEGRATION,
        data_type="invoices",
        include_resolved=True,
        limit=10_000,
    )
    assert prepare("dead-letters", "--company-id", "7", "--data-type", "customers") == (
        DeadLettersQuery(company_id="7", data_type="customers")
    )


def test_report_runs_cancel_arguments() -> None:
    assert parse("report").hours is None
    assert parse("report", "--last-24h").last_24h is True
    assert parse("report", "--hours", "168").hours == 168.0
    assert parse("runs").limit == 20
    assert parse("runs", "--limit", "5").limit == 5
    assert parse("cancel", CRED.upper()).target == CRED
    assert parse("cancel", "1111").target == "1111"
    assert parse("show", "ABCDEF01-2").sync_id == "abcdef012"


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


def test_add_reads_the_secret_from_standard_input() -> None:
    request = prepare(*ADD, stdin="s3cret\n")
    assert isinstance(request, CredentialAdd)
    assert request.client_secret.get_secret_value() == "s3cret"
    assert request.environment is Environment.PRODUCTION
    assert request.schedule_enabled is True
    assert request.app_key is None
    assert "s3cret" not in repr(request)


def test_add_reads_the_secret_and_app_key_from_files(tmp_path: Path) -> None:
    secret, key = tmp_path / "secret", tmp_path / "key"
    secret.write_text("from-file\n")
    key.write_text("ak1.key")
    request = prepare(
        *ADD, "--client-secret-file", str(secret), "--app-key-file", str(key), "--no-schedule"
    )
    assert request.client_secret.get_secret_value() == "from-file"
    assert request.app_key.get_secret_value() == "ak1.key"
    assert request.schedule_enabled is False


def test_add_environment_long_form() -> None:
    argv = [a if a != "-e" else "--environment" for a in ADD]
    argv[argv.index("production")] = "integration"
    assert prepare(*argv, stdin="x").environment is Environment.INTEGRATION


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        ("two\nlines\n", "more than one line"),
    ],
)
def test_secret_files_are_read_strictly(
    tmp_path: Path, content: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    line = usage_error(capsys, *ADD, "--client-secret-file", str(path))
    assert "--client-secret-file" in line and problem in line


def test_only_one_trailing_newline_is_stripped(tmp_path: Path) -> None:
    assert read_secret(None, "--x", io.StringIO(" spaced \n"), prompt="").get_secret_value() == (
        " spaced "
    )
    assert read_secret(None, "--x", io.StringIO("crlf\r\n"), prompt="").get_secret_value() == "crlf"
    with pytest.raises(UsageError, match="more than one line"):
        read_secret(None, "--x", io.StringIO("a\n\n"), prompt="")


def test_unreadable_secret_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = usage_error(capsys, *ADD, "--client-secret-file", str(tmp_path / "missing"))
    assert "--client-secret-file" in line and "cannot read" in line


def test_rejected_values_never_echo_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("cs.TOPSECRET\n")
    argv = list(ADD)
    argv[argv.index("Acme HVAC")] = "x" * 600  # longer than the protocol allows
    with pytest.raises(SystemExit) as raised:
        stsyncctl.main([*argv, "--client-secret-file", str(secret)])
    assert raised.value.code == 2
    captured = capsys.readouterr()
    assert "--company-name" in captured.err.splitlines()[-1]
    assert "TOPSECRET" not in captured.err + captured.out


def test_tenant_id_must_be_a_positive_number(capsys: pytest.CaptureFixture[str]) -> None:
    argv = list(ADD)
    argv[argv.index("123456789")] = "0"
    assert "--tenant-id" in usage_error(capsys, *argv)


def test_update_sends_only_what_is_given(tmp_path: Path) -> None:
    assert prepare("credentials", "update", CRED, "--company-name", "New") == CredentialUpdate(
        company_name="New"
    )
    assert prepare("credentials", "update", CRED, "--no-schedule").schedule_enabled is False
    assert prepare("credentials", "update", CRED, "--schedule").schedule_enabled is True
    assert prepare("credentials", "update", CRED, "--clear-app-key").clear_app_key is True
    request = prepare(
        "credentials",
        "update",
        CRED,
        "--client-id",
        "cid.new",
        "--client-secret-file",
        "-",
        stdin="new-secret\n",
    )
    assert request.client_id == "cid.new"
    assert request.client_secret.get_secret_value() == "new-secret"
    body = wire(request)
    assert body == {"client_id": "cid.new", "client_secret": "new-secret", "clear_app_key": False}


def test_update_app_key_file_and_clear_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(
        capsys, "credentials", "update", CRED, "--app-key-file", "k", "--clear-app-key"
    )
    assert "--clear-app-key" in line


@pytest.mark.parametrize("action", ["show", "enable", "disable", "remove", "test"])
def test_credential_id_commands(action: str) -> None:
    args = parse("credentials", action, CRED)
    assert args.credential_id == CRED and args.action == action


def test_remove_yes_short_and_long() -> None:
    assert parse("credentials", "remove", "-y", CRED).yes is True
    assert parse("credentials", "remove", "--yes", CRED).yes is True
    assert parse("credentials", "remove", CRED).yes is False


def test_the_wire_body_reveals_the_secret_only_for_the_socket() -> None:
    request = prepare(*ADD, stdin="s3cret")
    body = wire(request)
    assert body["client_secret"] == "s3cret"
    assert body["environment"] == "production"
    assert body["tenant_id"] == 123456789
