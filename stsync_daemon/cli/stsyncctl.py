"""stsyncctl: the operator's command line; it talks only to the daemon's control socket.

Parse, then run: arguments become the protocol's request models (bad values exit 2 before any
connection), then one asyncio run talks to the daemon. Exit codes are a contract (see EXIT_CODES).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar, cast
from urllib.parse import quote

from pydantic import BaseModel, SecretStr, ValidationError

from ..config import default_socket_path
from ..control.protocol import (
    EVENT_ERROR,
    EVENT_RUN_FINISHED,
    EVENT_RUN_STARTED,
    EVENT_SYNC_FINISHED,
    EVENT_SYNC_PROGRESS,
    EVENT_SYNC_STARTED,
    CredentialAdd,
    CredentialUpdate,
    CredentialView,
    DeadLetters,
    DeadLettersQuery,
    Health,
    Plan,
    ProcessRequest,
    Report,
    RetryRequest,
    RunSummary,
    RunView,
    ScheduleView,
    SkippedView,
    StatusQuery,
    StatusSummary,
    SyncView,
)
from ..enums import DataTypeFilter, Environment
from ..limits import MAX_CONCURRENT_DEFAULT, MAX_CONCURRENT_MAX, SYNC_TIMEOUT_DEFAULT
from . import render
from .client import REFUSING_CODES, ControlClient, DaemonError, DaemonUnreachable

PROG = "stsyncctl"


def _version() -> str:
    """The installed distribution's version (not `stsync_daemon.__version__`: a stale editable
    install can turn the package into a namespace without it)."""
    try:
        return metadata.version("stsync")
    except metadata.PackageNotFoundError:
        return "unknown"


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

EXIT_CODES = """\
exit codes:
  0    all went well (including nothing to do)
  1    the command ran but at least one sync failed or timed out, a credential test failed,
       health is not ok,
       or the daemon rejected the request (unknown id, conflict, invalid value)
  2    usage error: a bad option or value (one line naming it, plus the usage)
  3    the daemon is not reachable or refuses us: no socket, permission denied, connection
       refused, this user not allowed, or the daemon cannot serve now
       (check: systemctl status stsync.service; is your user in the stsync group?)
  130  interrupted (Ctrl-C); a run goes on in the daemon: stsyncctl cancel RUN_ID stops it"""

CREDENTIAL_ID = "CREDENTIAL_ID"
ENVIRONMENTS = [e.value for e in Environment]
DATA_TYPES = [d.value for d in DataTypeFilter]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the epilogs' examples and exit-code table as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def _epilog(examples: str) -> str:
    return f"examples:\n{examples}\n\n{EXIT_CODES}"


# ---------------------------------------------------------------------------------------------
# Argument types: each names what is wrong; argparse adds "argument --option:" and the usage.


def _positive_int(maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text!r}")
        return value

    parse.__name__ = "positive integer"
    return parse


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _tenant_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid tenant id: {text!r} (a number)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid tenant id: {text!r} (a positive number)")
    return value


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid id: {text!r} (expected a UUID like 3f2b8c1e-0d4a-4e5f-9a7b-1c2d3e4f5a6b)"
        ) from None


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# ---------------------------------------------------------------------------------------------
# The parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    """`--json-output` and `--socket` after the command too; SUPPRESS keeps the global value."""
    parser.add_argument(
        "--json-output",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print exactly one JSON document on stdout (progress goes to stderr or is omitted)",
    )
    parser.add_argument(
        "--socket", metavar="PATH", default=argparse.SUPPRESS, help="the daemon's control socket"
    )


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    description: str,
    examples: str,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=_epilog(examples),
        formatter_class=_Formatter,
    )
    _add_common(parser)
    return parser


def _add_run_knobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-concurrent",
        type=_positive_int(MAX_CONCURRENT_MAX),
        metavar="N",
        help=(
            "syncs in flight at once (default: the daemon's [sync] max_concurrent, "
            f"{MAX_CONCURRENT_DEFAULT})"
        ),
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=_positive_number,
        metavar="SECONDS",
        help=(
            "time limit of each sync (default: the daemon's [sync] timeout_seconds, "
            f"{SYNC_TIMEOUT_DEFAULT:g})"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; tests parse with it directly."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Control the stsync daemon (stsyncd): run and retry ServiceTitan syncs, show their "
            "status, manage credentials and schedules. Talks only to the daemon's control socket."
        ),
        epilog=_epilog(
            "  stsyncctl status --running-only\n"
            "  stsyncctl process -e production -d invoices\n"
            "  stsyncctl --json-output retry --max-age 12\n"
            "  stsyncctl credentials list\n"
            "  stsyncctl COMMAND --help"
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the daemon's control socket (default: $STSYNC_SOCKET, else {default_socket_path()})",
    )
    parser.add_argument(
        "--json-output",
        action="store_true",
        help="print exactly one JSON document on stdout (progress goes to stderr or is omitted)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # process ----------------------------------------------------------------------------------
    process = _command(
        commands,
        "process",
        "run syncs now (or show the plan with --dry-run)",
        "Run the syncs of the matching credentials now, with live progress, then a summary.",
        "  stsyncctl process                                # every active credential, both types\n"
        "  stsyncctl process -e production -d customers\n"
        "  stsyncctl process -c 1042 --full -t 7200         # full resync of one company\n"
        "  stsyncctl process --dry-run --estimate -e integration",
    )
    process.add_argument("-e", "--environment", choices=ENVIRONMENTS, help="only this environment")
    process.add_argument(
        "-c", "--company-id", metavar="ID", type=_non_empty, help="only this company"
    )
    process.add_argument(
        "--credential-id", metavar="ID", type=_uuid, help="only this credential (a UUID)"
    )
    process.add_argument(
        "-d",
        "--data-type",
        choices=DATA_TYPES,
        default=DataTypeFilter.BOTH.value,
        help="what to sync (default: both)",
    )
    process.add_argument(
        "--dry-run", action="store_true", help="show the plan; sync and write nothing"
    )
    process.add_argument(
        "--estimate",
        action="store_true",
        help="with --dry-run: ask ServiceTitan (read-only) how many records changed",
    )
    _add_run_knobs(process)
    process.add_argument(
        "--full", action="store_true", help="full resync from the beginning instead of incremental"
    )
    process.set_defaults(prepare=_prepare_process, handler=_process)

    # status -----------------------------------------------------------------------------------
    status = _command(
        commands,
        "status",
        "show recent syncs and statistics",
        "List recent syncs, newest first, then statistics over every matching sync.",
        "  stsyncctl status\n"
        "  stsyncctl status -r                  # what is running now\n"
        "  stsyncctl status -f --last-24h       # what failed today\n"
        "  stsyncctl --json-output status -c 1042 --limit 10",
    )
    status.add_argument(
        "-c", "--company-id", metavar="ID", type=_non_empty, help="only this company"
    )
    only = status.add_mutually_exclusive_group()
    only.add_argument("-r", "--running-only", action="store_true", help="only running syncs")
    only.add_argument(
        "-f", "--failed-only", action="store_true", help="only failed or timed-out syncs"
    )
    status.add_argument(
        "--last-24h", action="store_true", help="only syncs started in the last 24 h"
    )
    status.add_argument(
        "--limit",
        type=_positive_int(100_000),
        default=50,
        metavar="N",
        help="show at most N syncs (default: 50)",
    )
    status.set_defaults(prepare=_prepare_status, handler=_status)

    # retry ------------------------------------------------------------------------------------
    retry = _command(
        commands,
        "retry",
        "re-run recent failed or timed-out syncs",
        "Re-run the latest failure of each credential and data type (unless a later sync "
        "succeeded), resuming from its cursor.",
        "  stsyncctl retry\n"
        "  stsyncctl retry -m 12 --exclude-auth-errors\n"
        "  stsyncctl retry --dry-run",
    )
    retry.add_argument(
        "-m",
        "--max-age",
        type=_positive_number,
        default=24.0,
        metavar="HOURS",
        help="only failures newer than this (default: 24)",
    )
    retry.add_argument(
        "--max-retries",
        type=_positive_int(),
        default=10,
        metavar="N",
        help="give up on a sync after N attempts (default: 10)",
    )
    retry.add_argument(
        "--exclude-auth-errors",
        action="store_true",
        help="skip authentication failures (they need a fixed credential, not a retry)",
    )
    retry.add_argument("--dry-run", action="store_true", help="show what would be retried")
    _add_run_knobs(retry)
    retry.set_defaults(prepare=_prepare_retry, handler=_retry)

    # credentials ------------------------------------------------------------------------------
    credentials = _command(
        commands,
        "credentials",
        "list, add, change, test or remove ServiceTitan credentials",
        "Manage the ServiceTitan credentials the daemon syncs with. Secrets are read from a file "
        "or standard input, never from the command line, and are never printed.",
        "  stsyncctl credentials list\n"
        "  stsyncctl credentials add --company-id 1042 --company-name 'Acme HVAC' -e production \\\n"
        "      --tenant-id 123456789 --client-id cid.abc --client-secret-file /root/acme.secret\n"
        "  stsyncctl credentials test CREDENTIAL_ID\n"
        "  stsyncctl credentials disable CREDENTIAL_ID",
    )
    actions = credentials.add_subparsers(dest="action", metavar="ACTION", required=True)

    def credential_command(name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
        sub = _command(
            actions, name, help_text, help_text[0].upper() + help_text[1:] + ".", examples
        )
        return sub

    listing = credential_command("list", "list every credential", "  stsyncctl credentials list")
    listing.set_defaults(prepare=None, handler=_credentials_list)

    show = credential_command(
        "show", "show one credential (never its secret)", "  stsyncctl credentials show ID"
    )
    show.add_argument("credential_id", metavar=CREDENTIAL_ID, type=_uuid)
    show.set_defaults(prepare=None, handler=_credentials_show)

    add = credential_command(
        "add",
        "add a credential (the secret from --client-secret-file or standard input)",
        "  stsyncctl credentials add --company-id 1042 --company-name 'Acme HVAC' \\\n"
        "      -e production --tenant-id 123456789 --client-id cid.abc \\\n"
        "      --client-secret-file /root/acme.secret\n"
        "  pass show acme | stsyncctl credentials add --company-id 1042 ... --client-id cid.abc\n"
        "  stsyncctl credentials add ... --no-schedule    # only manual runs until enabled",
    )
    add.add_argument(
        "--company-id", required=True, type=_non_empty, metavar="ID", help="your id of the company"
    )
    add.add_argument(
        "--company-name", required=True, type=_non_empty, metavar="NAME", help="shown in outputs"
    )
    add.add_argument(
        "-e", "--environment", required=True, choices=ENVIRONMENTS, help="ServiceTitan environment"
    )
    add.add_argument(
        "--tenant-id", required=True, type=_tenant_id, metavar="N", help="ServiceTitan tenant id"
    )
    add.add_argument(
        "--client-id", required=True, type=_non_empty, metavar="ID", help="the app's client id"
    )
    add.add_argument(
        "--client-secret-file",
        metavar="PATH",
        help="file holding the client secret ('-' or omitted: standard input; a terminal prompts)",
    )
    add.add_argument(
        "--app-key-file",
        metavar="PATH",
        help="file holding this credential's app key (default: the daemon's app key)",
    )
    add.add_argument(
        "--no-schedule",
        dest="schedule_enabled",
        action="store_false",
        help="leave it out of scheduled runs (manual runs still use it)",
    )
    add.set_defaults(prepare=_prepare_credentials_add, handler=_credentials_add)

    update = credential_command(
        "update",
        "change a credential: only what is given changes",
        "  stsyncctl credentials update ID --company-name 'Acme Heating'\n"
        "  stsyncctl credentials update ID --client-id cid.new --client-secret-file new.secret\n"
        "  stsyncctl credentials update ID --no-schedule",
    )
    update.add_argument("credential_id", metavar=CREDENTIAL_ID, type=_uuid)
    update.add_argument("--company-name", type=_non_empty, metavar="NAME", help="new name")
    update.add_argument("--client-id", type=_non_empty, metavar="ID", help="new client id")
    update.add_argument(
        "--client-secret-file", metavar="PATH", help="new client secret from this file ('-': stdin)"
    )
    keys = update.add_mutually_exclusive_group()
    keys.add_argument(
        "--app-key-file", metavar="PATH", help="new app key from this file ('-': stdin)"
    )
    keys.add_argument(
        "--clear-app-key", action="store_true", help="drop the app key (use the daemon's)"
    )
    scheduled = update.add_mutually_exclusive_group()
    scheduled.add_argument(
        "--schedule",
        dest="schedule_enabled",
        action="store_const",
        const=True,
        default=None,
        help="include it in scheduled runs",
    )
    scheduled.add_argument(
        "--no-schedule",
        dest="schedule_enabled",
        action="store_const",
        const=False,
        help="leave it out of scheduled runs",
    )
    # Fixed identity: accepted so the error can say why, rather than "unrecognized arguments".
    for flags in (("--company-id",), ("-e", "--environment"), ("--tenant-id",)):
        update.add_argument(
            *flags, dest="fixed_" + flags[-1][2:].replace("-", "_"), help=argparse.SUPPRESS
        )
    update.set_defaults(prepare=_prepare_credentials_update, handler=_credentials_update)

    for name, help_text in (
        ("enable", "include a credential in scheduled runs again (clears its error state)"),
        ("disable", "leave a credential out of scheduled runs"),
    ):
        toggle = credential_command(name, help_text, f"  stsyncctl credentials {name} ID")
        toggle.add_argument("credential_id", metavar=CREDENTIAL_ID, type=_uuid)
        toggle.set_defaults(prepare=None, handler=_credentials_toggle)

    remove = credential_command(
        "remove",
        "remove a credential and its sync history",
        "  stsyncctl credentials remove ID        # asks on a terminal\n"
        "  stsyncctl credentials remove -y ID",
    )
    remove.add_argument("credential_id", metavar=CREDENTIAL_ID, type=_uuid)
    remove.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    remove.set_defaults(prepare=None, handler=_credentials_remove)

    test = credential_command(
        "test",
        "check a credential: fetch a token and one page, read-only",
        "  stsyncctl credentials test ID",
    )
    test.add_argument("credential_id", metavar=CREDENTIAL_ID, type=_uuid)
    test.set_defaults(prepare=None, handler=_credentials_test)

    # schedules, runs, cancel, report, health --------------------------------------------------
    schedules = _command(
        commands,
        "schedules",
        "show the schedules with their last and next fire times",
        "Each configured schedule: cron, timezone, action, filters, last and next fire time.",
        "  stsyncctl schedules",
    )
    schedules.set_defaults(prepare=None, handler=_schedules)

    runs = _command(
        commands,
        "runs",
        "show recent runs (batches), running ones included",
        "Recent runs, newest first.",
        "  stsyncctl runs\n  stsyncctl runs --limit 5",
    )
    runs.add_argument(
        "--limit",
        type=_positive_int(100_000),
        default=20,
        metavar="N",
        help="show at most N runs (default: 20)",
    )
    runs.set_defaults(prepare=None, handler=_runs)

    cancel = _command(
        commands,
        "cancel",
        "cancel a running run or sync",
        "Cancel a running run (all its syncs) or a single running sync; what they committed stays.",
        "  stsyncctl cancel RUN_ID      # ids from `stsyncctl runs` or `stsyncctl status -r`",
    )
    cancel.add_argument("target", metavar="RUN_OR_SYNC_ID", type=_uuid)
    cancel.set_defaults(prepare=None, handler=_cancel)

    report = _command(
        commands,
        "report",
        "the report the daily schedule writes",
        "Syncs, failures and records per company, environment and data type over a window.",
        "  stsyncctl report --last-24h\n  stsyncctl --json-output report --hours 168",
    )
    window = report.add_mutually_exclusive_group()
    window.add_argument(
        "--last-24h", action="store_true", help="the last 24 hours (the default window)"
    )
    window.add_argument(
        "--hours", type=_positive_number, metavar="N", help="the last N hours instead"
    )
    report.set_defaults(prepare=None, handler=_report)

    dead = _command(
        commands,
        "dead-letters",
        "show records the daemon could not store",
        "Records a sync could not store (they wait in stsync.dead_letters with the record as "
        "received), newest first. Only open ones unless --all: a dead letter is resolved when a "
        "later sync stores the same record.",
        "  stsyncctl dead-letters\n"
        "  stsyncctl dead-letters -c 1042 -d invoices\n"
        "  stsyncctl dead-letters --all --limit 500\n"
        "  stsyncctl --json-output dead-letters | jq -r '.dead_letters[].raw'",
    )
    dead.add_argument("-c", "--company-id", metavar="ID", type=_non_empty, help="only this company")
    dead.add_argument(
        "--credential-id", metavar="ID", type=_uuid, help="only this credential (a UUID)"
    )
    dead.add_argument("-e", "--environment", choices=ENVIRONMENTS, help="only this environment")
    dead.add_argument(
        "-d",
        "--data-type",
        choices=DATA_TYPES,
        default=DataTypeFilter.BOTH.value,
        help="only this data type (default: both)",
    )
    dead.add_argument(
        "--all",
        dest="include_resolved",
        action="store_true",
        help="resolved ones too (a later sync stored the record)",
    )
    dead.add_argument(
        "--limit",
        type=_positive_int(10_000),
        default=50,
        metavar="N",
        help="show at most N (default: 50; the count below the table is of all that match)",
    )
    dead.set_defaults(prepare=_prepare_dead_letters, handler=_dead_letters)

    health = _command(
        commands,
        "health",
        "check that the daemon answers, and its database",
        "The daemon's health: status (ok, degraded or unhealthy, with the reasons), version, uptime,\n"
        "database, background loops, running syncs. Exits 0 only when the status is ok.",
        "  stsyncctl health",
    )
    health.set_defaults(prepare=None, handler=_health)
    return parser


# ---------------------------------------------------------------------------------------------
# Preparing requests (before any connection; problems are usage errors)

_OPTION_OF_FIELD = {
    "company_id": "--company-id",
    "company_name": "--company-name",
    "environment": "--environment",
    "tenant_id": "--tenant-id",
    "client_id": "--client-id",
    "client_secret": "--client-secret-file",
    "app_key": "--app-key-file",
    "limit": "--limit",
    "max_concurrent": "--max-concurrent",
    "timeout_seconds": "--timeout",
    "max_age_hours": "--max-age",
    "max_retries": "--max-retries",
    "credential_id": "--credential-id",
    "data_type": "--data-type",
    "include_resolved": "--all",
}


class UsageError(Exception):
    """A bad value found after argparse: printed with the command's usage, exit 2."""

    def __init__(self, option: str | None, message: str) -> None:
        super().__init__(f"argument {option}: {message}" if option else message)


M = TypeVar("M", bound=BaseModel)


def _model(model: type[M], **values: Any) -> M:
    """Build a request model; a rejected value becomes a usage error naming its option.

    The input value is never quoted back: it may be a secret.
    """
    try:
        return model(**values)
    except ValidationError as error:
        first = error.errors(include_input=False)[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise UsageError(_OPTION_OF_FIELD.get(name, name), first["msg"]) from None


def read_secret(path: str | None, option: str, stdin: TextIO, *, prompt: str) -> SecretStr:
    """A secret from a file or standard input, strictly: one trailing newline is dropped, the rest
    is kept as is; empty or multi-line is a usage error. A terminal gets a prompt without echo."""
    if path is None or path == "-":
        if stdin.isatty():
            try:
                text = getpass.getpass(prompt)
            except EOFError:
                text = ""
        else:
            text = stdin.read()
        source = "standard input"
    else:
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                text = handle.read()
        except UnicodeDecodeError:
            raise UsageError(option, f"{path} is not UTF-8 text") from None
        except OSError as error:
            raise UsageError(option, f"cannot read {path}: {error.strerror or error}") from None
        source = path
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise UsageError(option, f"the secret from {source} is empty")
    if "\n" in text or "\r" in text:
        raise UsageError(option, f"the secret from {source} has more than one line")
    return SecretStr(text)


def _prepare_process(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    if args.estimate and not args.dry_run:
        raise UsageError("--estimate", "only with --dry-run")
    return _model(
        ProcessRequest,
        environment=args.environment,
        company_id=args.company_id,
        credential_id=args.credential_id,
        data_type=args.data_type,
        dry_run=args.dry_run,
        estimate=args.estimate,
        max_concurrent=args.max_concurrent,
        timeout_seconds=args.timeout,
        full=args.full,
    )


def _prepare_retry(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    return _model(
        RetryRequest,
        max_age_hours=args.max_age,
        max_retries=args.max_retries,
        exclude_auth_errors=args.exclude_auth_errors,
        dry_run=args.dry_run,
        max_concurrent=args.max_concurrent,
        timeout_seconds=args.timeout,
    )


def _prepare_status(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    return _model(
        StatusQuery,
        company_id=args.company_id,
        running_only=args.running_only,
        failed_only=args.failed_only,
        last_24h=args.last_24h,
        limit=args.limit,
    )


def _prepare_dead_letters(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    both = args.data_type == DataTypeFilter.BOTH.value
    return _model(
        DeadLettersQuery,
        credential_id=args.credential_id,
        company_id=args.company_id,
        environment=args.environment,
        data_type=None if both else args.data_type,
        include_resolved=args.include_resolved,
        limit=args.limit,
    )


def _prepare_credentials_add(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    if args.client_secret_file == "-" and args.app_key_file == "-":
        raise UsageError("--app-key-file", "standard input already carries the client secret")
    secret = read_secret(
        args.client_secret_file, "--client-secret-file", stdin, prompt="Client secret (hidden): "
    )
    app_key = None
    if args.app_key_file is not None:
        if args.app_key_file == "-" and args.client_secret_file is None:
            raise UsageError("--app-key-file", "standard input already carries the client secret")
        app_key = read_secret(args.app_key_file, "--app-key-file", stdin, prompt="App key: ")
    return _model(
        CredentialAdd,
        company_id=args.company_id,
        company_name=args.company_name,
        environment=args.environment,
        tenant_id=args.tenant_id,
        client_id=args.client_id,
        client_secret=secret,
        app_key=app_key,
        schedule_enabled=args.schedule_enabled,
    )


def _prepare_credentials_update(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    for option, value in (
        ("--company-id", args.fixed_company_id),
        ("--environment", args.fixed_environment),
        ("--tenant-id", args.fixed_tenant_id),
    ):
        if value is not None:
            raise UsageError(
                option, "cannot be changed; add a new credential and remove this one instead"
            )
    if args.client_secret_file == "-" and args.app_key_file == "-":
        raise UsageError("--app-key-file", "standard input already carries the client secret")
    secret = (
        read_secret(
            args.client_secret_file, "--client-secret-file", stdin, prompt="Client secret: "
        )
        if args.client_secret_file is not None
        else None
    )
    app_key = (
        read_secret(args.app_key_file, "--app-key-file", stdin, prompt="App key: ")
        if args.app_key_file is not None
        else None
    )
    given = {
        key: value
        for key, value in {
            "company_name": args.company_name,
            "client_id": args.client_id,
            "client_secret": secret,
            "app_key": app_key,
            "clear_app_key": args.clear_app_key or None,
            "schedule_enabled": args.schedule_enabled,
        }.items()
        if value is not None
    }
    if not given:
        raise UsageError(
            None,
            "nothing to change: give --company-name, --client-id, --client-secret-file, "
            "--app-key-file, --clear-app-key, --schedule or --no-schedule",
        )
    return _model(CredentialUpdate, **given)


def _wire(model: BaseModel) -> dict[str, Any]:
    """The request body: unset fields left out, secrets revealed (only for the socket)."""
    body: dict[str, Any] = {}
    for key, value in model.model_dump(mode="python", exclude_none=True).items():
        if isinstance(value, SecretStr):
            body[key] = value.get_secret_value()
        elif isinstance(value, uuid.UUID):
            body[key] = str(value)
        else:
            body[key] = value
    return body


# ---------------------------------------------------------------------------------------------
# Running commands


@dataclass
class Context:
    """What a command needs besides its arguments; `run_id` is kept for the Ctrl-C note."""

    socket: Path
    json_output: bool
    stdout: TextIO
    stderr: TextIO
    stdin: TextIO
    request: BaseModel | None = None
    run_id: str | None = None
    progress: render.Progress | None = field(default=None, repr=False)

    def width(self) -> int:
        """Columns available to tables (wide when not on a terminal, unless $COLUMNS says)."""
        return shutil.get_terminal_size((160, 24)).columns

    def out(self, text: str = "") -> None:
        """A line of human output on stdout."""
        self.stdout.write(text + "\n")

    def emit_json(self, document: object) -> None:
        """The one JSON document of `--json-output`."""
        self.stdout.write(render.dump_json(document))

    def note(self, text: str) -> None:
        """A one-line message on stderr."""
        self.stderr.write(f"{PROG}: {text}\n")
        self.stderr.flush()

    def client(self) -> ControlClient:
        """A client of the configured socket."""
        return ControlClient(self.socket)


Handler = Callable[[Context, argparse.Namespace], Coroutine[Any, Any, int]]


def _path_id(value: str) -> str:
    return quote(value, safe="")


async def _process(ctx: Context, args: argparse.Namespace) -> int:
    return await _run_batch(ctx, "/process", estimate=bool(args.estimate))


async def _retry(ctx: Context, args: argparse.Namespace) -> int:
    return await _run_batch(ctx, "/retry", estimate=False)


def _make_progress(ctx: Context) -> render.Progress:
    """Bars on a terminal, plain lines otherwise; with JSON, only on a terminal's stderr."""
    if ctx.json_output:
        if ctx.stderr.isatty():
            return render.TtyProgress(ctx.stderr, ctx.width)
        return render.Progress(None)
    if ctx.stdout.isatty():
        return render.TtyProgress(ctx.stdout, ctx.width)
    return render.PlainProgress(ctx.stdout)


async def _run_batch(ctx: Context, path: str, *, estimate: bool) -> int:
    assert ctx.request is not None
    body = _wire(ctx.request)
    async with ctx.client() as client:
        if body.get("dry_run"):
            plan = cast(Plan, await client.request("POST", path, body=body))
            if ctx.json_output:
                ctx.emit_json(plan)
            else:
                ctx.out(render.plan_text(plan, ctx.width(), estimate=estimate))
            return EXIT_OK
        progress = ctx.progress = _make_progress(ctx)
        ticker = asyncio.create_task(_tick(progress))
        try:
            return await _follow(ctx, progress, client.stream(path, body))
        finally:
            ticker.cancel()
            progress.close()


async def _tick(progress: render.Progress) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress.refresh()


async def _follow(ctx: Context, progress: render.Progress, events: Any) -> int:
    """Show a run's events as they come; the run's summary decides the exit code."""
    summary: RunSummary | None = None
    failure: str | None = None
    shown_skips: set[tuple[str, str, str]] = set()

    def skipped(items: Sequence[SkippedView]) -> None:
        for item in items:
            key = (item["credential_id"], item["data_type"], item["reason"])
            if key not in shown_skips:
                shown_skips.add(key)
                progress.line(render.skipped_lines([item])[0])

    async for event in events:
        kind = event.get("event")
        if kind == EVENT_RUN_STARTED:
            ctx.run_id = str(event.get("run_id"))
            planned = event.get("syncs") or []
            progress.line(
                render.found_line(
                    str(event.get("action", "process")),
                    int(event.get("total_credentials") or 0),
                    len(planned),
                )
            )
            skipped(event.get("skipped") or [])
        elif kind == EVENT_SYNC_STARTED:
            progress.started(event)
        elif kind == EVENT_SYNC_PROGRESS:
            progress.progress(event)
        elif kind == EVENT_SYNC_FINISHED:
            progress.finished(cast(SyncView, event["sync"]))
        elif kind == EVENT_RUN_FINISHED:
            summary = cast(RunSummary, event["summary"])
            skipped(summary.get("skipped") or [])
        elif kind == EVENT_ERROR:
            failure = str(event.get("message") or "unknown error")
        # Unknown events are ignored: a newer daemon may send more.
    progress.close()
    if summary is None:
        if failure is not None:
            ctx.note(f"the run failed in the daemon: {failure} (journalctl -u stsync.service)")
            return EXIT_FAILED
        raise DaemonUnreachable(
            f"the daemon on {ctx.socket} closed the stream before the run finished; the run may "
            "still be going (stsyncctl runs)"
        )
    if ctx.json_output:
        ctx.emit_json(summary)
    else:
        ctx.out(render.run_summary(summary))
    if failure is not None:
        ctx.note(f"the run reported an error: {failure}")
    ctx.run_id = None
    ok = summary["failed_syncs"] == 0 and summary["status"] == "completed" and failure is None
    return EXIT_OK if ok else EXIT_FAILED


def _query(model: BaseModel) -> dict[str, str]:
    """A query model as a query string: unset and false values left out, the rest as text."""
    return {
        key: ("true" if value is True else str(value))
        for key, value in _wire(model).items()
        if value is not False
    }


async def _status(ctx: Context, args: argparse.Namespace) -> int:
    assert ctx.request is not None
    async with ctx.client() as client:
        answer = await client.request("GET", "/status", params=_query(ctx.request))
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    syncs = cast(list[SyncView], answer["syncs"])
    summary = cast(StatusSummary, answer["summary"])
    if not syncs:
        ctx.out(render.NO_SYNCS)
        if summary.get("dead_letters"):
            ctx.out(render.open_dead_letters_note(summary["dead_letters"]))
        return EXIT_OK
    ctx.out(render.status_table(syncs, ctx.width()))
    ctx.out(render.status_summary(summary, len(syncs)))
    return EXIT_OK


def _credential_list(answer: Any) -> list[CredentialView]:
    """`GET /v1/credentials` as a list, whether it came bare or as `{"credentials": [...]}`."""
    if isinstance(answer, dict):
        answer = answer.get("credentials", [])
    return cast(list[CredentialView], answer or [])


async def _credentials_list(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.client() as client:
        answer = await client.request("GET", "/credentials")
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    items = _credential_list(answer)
    if not items:
        ctx.out("No credentials configured (add one with `stsyncctl credentials add`)")
        return EXIT_OK
    ctx.out(render.credentials_table(items, ctx.width()))
    ctx.out()
    ctx.out(f"{len(items)} credentials")
    return EXIT_OK


async def _credentials_show(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.client() as client:
        answer = await client.request("GET", f"/credentials/{_path_id(args.credential_id)}")
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        ctx.out(render.credential_detail(cast(CredentialView, answer)))
    return EXIT_OK


async def _credentials_add(ctx: Context, args: argparse.Namespace) -> int:
    assert ctx.request is not None
    async with ctx.client() as client:
        answer = await client.request("POST", "/credentials", body=_wire(ctx.request))
    view = cast(CredentialView, answer)
    if ctx.json_output:
        ctx.emit_json(view)
    else:
        label = render.sync_label(
            view["company"], view["environment"], f"tenant {view['tenant_id']}"
        )
        ctx.out(f"Added credential {view['id']} for {label}")
        ctx.out(f"Check it with: stsyncctl credentials test {view['id']}")
    return EXIT_OK


async def _credentials_update(ctx: Context, args: argparse.Namespace) -> int:
    assert ctx.request is not None
    async with ctx.client() as client:
        answer = await client.request(
            "PATCH", f"/credentials/{_path_id(args.credential_id)}", body=_wire(ctx.request)
        )
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        ctx.out(f"Updated credential {args.credential_id}")
        if isinstance(answer, dict):
            ctx.out(render.credential_detail(cast(CredentialView, answer)))
    return EXIT_OK


async def _credentials_toggle(ctx: Context, args: argparse.Namespace) -> int:
    action = str(args.action)
    async with ctx.client() as client:
        answer = await client.request(
            "POST", f"/credentials/{_path_id(args.credential_id)}/{action}"
        )
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    done = "Enabled" if action == "enable" else "Disabled"
    if isinstance(answer, dict) and "company" in answer:
        view = cast(CredentialView, answer)
        ctx.out(
            f"{done} credential {view['id']} for "
            f"{view['company']} ({view['environment']}): status {view['status']}"
        )
    else:
        ctx.out(f"{done} credential {args.credential_id}")
    return EXIT_OK


def _confirm(ctx: Context, question: str) -> bool:
    ctx.stderr.write(question + " [y/N] ")
    ctx.stderr.flush()
    answer = ctx.stdin.readline()
    if not answer.endswith("\n"):
        ctx.stderr.write("\n")
    return answer.strip().lower() in ("y", "yes")


async def _credentials_remove(ctx: Context, args: argparse.Namespace) -> int:
    path = f"/credentials/{_path_id(args.credential_id)}"
    async with ctx.client() as client:
        if not args.yes and ctx.stdin.isatty():
            view = cast(CredentialView, await client.request("GET", path))
            question = (
                f"Remove credential {view['id']} for {view['company']} ({view['environment']}, "
                f"tenant {view['tenant_id']})? Its sync history goes with it."
            )
            if not _confirm(ctx, question):
                ctx.note("not removed")
                return EXIT_FAILED
        answer = await client.request("DELETE", path)
    if ctx.json_output:
        ctx.emit_json(answer if answer is not None else {"removed": True, "id": args.credential_id})
    else:
        ctx.out(f"Removed credential {args.credential_id}")
    return EXIT_OK


async def _credentials_test(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.client() as client:
        answer = await client.request("POST", f"/credentials/{_path_id(args.credential_id)}/test")
    result = cast(Mapping[str, Any], answer or {})
    ok = bool(result.get("ok"))
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        message = str(result.get("message") or ("it works" if ok else "the test failed"))
        ctx.out(f"{'OK' if ok else 'FAILED'}: {message}")
    return EXIT_OK if ok else EXIT_FAILED


async def _schedules(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.client() as client:
        answer = await client.request("GET", "/schedules")
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    items = cast(list[ScheduleView], answer.get("schedules") or [])
    if not items:
        ctx.out("No schedules configured")
    else:
        ctx.out(render.schedules_table(items, ctx.width()))
    return EXIT_OK


async def _runs(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.client() as client:
        answer = await client.request("GET", "/runs", params={"limit": str(args.limit)})
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    items = cast(list[RunView], answer.get("runs") or [])
    if not items:
        ctx.out("No runs found")
    else:
        ctx.out(render.runs_table(items, ctx.width()))
    return EXIT_OK


async def _cancel(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.client() as client:
        answer = await client.request("POST", f"/cancel/{_path_id(args.target)}")
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    what = answer.get("cancelled") if isinstance(answer, dict) else True
    if what in ("run", "sync"):
        ctx.out(f"Cancelled {what} {args.target}; what it committed stays")
    elif what:
        ctx.out(f"Cancelled {args.target}; what it committed stays")
    else:
        ctx.out(f"Nothing to cancel: {args.target} is not running")
    return EXIT_OK


async def _report(ctx: Context, args: argparse.Namespace) -> int:
    hours = args.hours if args.hours is not None else 24.0
    async with ctx.client() as client:
        answer = await client.request("GET", "/report", params={"hours": f"{hours:g}"})
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        ctx.out(render.report_text(cast(Report, answer), ctx.width()))
    return EXIT_OK


async def _dead_letters(ctx: Context, args: argparse.Namespace) -> int:
    assert ctx.request is not None
    async with ctx.client() as client:
        answer = await client.request("GET", "/dead-letters", params=_query(ctx.request))
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    document = cast(DeadLetters, answer)
    items, everything = document["dead_letters"], bool(args.include_resolved)
    if not items:
        ctx.out(render.no_dead_letters(include_resolved=everything))
        return EXIT_OK
    ctx.out(render.dead_letters_table(items, ctx.width()))
    ctx.out()
    ctx.out(render.dead_letters_count(document["total"], len(items), include_resolved=everything))
    return EXIT_OK


async def _health(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.client() as client:
        answer = await client.request("GET", "/health")
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        ctx.out(render.health_text(cast(Health, answer)))
    # For monitoring scripts: only a daemon that can do all of its work answers 0.
    return EXIT_OK if answer.get("status") == "ok" else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# Entry point


def _usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)


def _subparser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser of the command given, so usage errors show that command's usage."""
    found = parser
    for name in (args.command, getattr(args, "action", None)):
        if name is None:
            break
        for action in found._actions:
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                found = action.choices[name]
                break
    return found


def socket_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    """`--socket`, else `$STSYNC_SOCKET`, else the daemon's default."""
    if args.socket:
        return Path(args.socket)
    if environ.get("STSYNC_SOCKET"):
        return Path(environ["STSYNC_SOCKET"])
    return default_socket_path()


def exit_code_for(error: BaseException) -> int:
    """The documented exit code of an error that ends a command."""
    if isinstance(error, DaemonUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(error, DaemonError):
        return EXIT_UNREACHABLE if error.code in REFUSING_CODES else EXIT_FAILED
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn every failure into one line and a documented exit code."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = Context(
        socket=socket_path(args, os.environ),
        json_output=bool(args.json_output),
        stdout=sys.stdout,
        stderr=sys.stderr,
        stdin=sys.stdin,
    )
    handler = cast(Handler, args.handler)
    try:
        if args.prepare is not None:
            try:
                ctx.request = args.prepare(args, ctx.stdin)
            except UsageError as error:
                _usage_error(_subparser(parser, args), str(error))
        code = asyncio.run(handler(ctx, args))
        ctx.stdout.flush()
        return code
    except KeyboardInterrupt:
        if ctx.progress is not None:
            ctx.progress.close()
        if ctx.run_id:
            ctx.note(
                f"interrupted; run {ctx.run_id} goes on in the daemon "
                f"(cancel it with: stsyncctl cancel {ctx.run_id})"
            )
        else:
            ctx.note(
                "interrupted; runs continue in the daemon and can be cancelled with "
                "`stsyncctl cancel RUN_ID` (see `stsyncctl runs`)"
            )
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`stsyncctl status | head`): say nothing more on a closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (DaemonUnreachable, DaemonError) as error:
        ctx.note(str(error))
        return exit_code_for(error)
    except Exception as error:  # the promise: no traceback ever reaches the user
        ctx.note(f"unexpected error: {type(error).__name__}: {error}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
