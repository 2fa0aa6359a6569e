"""stsyncctl's command line as an argparse parser: commands, options, help and examples.

Only the shape of the command line lives here; what each command does is bound to its path
(`("credentials", "add")`) in `stsyncctl.COMMANDS`. Argument types reject bad values with a
message naming what is wrong, so usage errors exit 2 before any connection.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from importlib import metadata

from ..config import default_socket_path
from ..control.protocol import id_ref
from ..enums import CredentialStatus, DataType, DataTypeFilter, Environment
from ..limits import (
    DEAD_LETTERS_LIMIT_MAX,
    ID_PREFIX_MIN,
    MAX_CONCURRENT_DEFAULT,
    MAX_CONCURRENT_MAX,
    RETRY_MAX_AGE_HOURS_DEFAULT,
    RETRY_MAX_RETRIES_DEFAULT,
    RUNS_LIMIT_DEFAULT,
    STATUS_LIMIT_DEFAULT,
    STATUS_LIMIT_MAX,
    SYNC_TIMEOUT_DEFAULT,
)
from .exits import EXIT_CODES

PROG = "stsyncctl"


def _version() -> str:
    """The installed distribution's version (not `stsync_daemon.__version__`: a stale editable
    install can turn the package into a namespace without it)."""
    try:
        return metadata.version("stsync")
    except metadata.PackageNotFoundError:
        return "unknown"


CREDENTIAL_ID = "CREDENTIAL_ID"
ENVIRONMENTS = [e.value for e in Environment]
DATA_TYPES = [d.value for d in DataTypeFilter]
CREDENTIAL_STATUSES = [s.value for s in CredentialStatus]
ID_HELP = f"a whole id or a unique prefix of it (at least {ID_PREFIX_MIN} hex digits)"


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


def _id(text: str) -> str:
    """A whole id or a prefix of one; the daemon resolves prefixes (unique, or an error)."""
    try:
        return id_ref(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid id: {text!r} (a whole id like 3f2b8c1e-0d4a-4e5f-9a7b-1c2d3e4f5a6b, or at "
            f"least its first {ID_PREFIX_MIN} hex digits, like 3f2b)"
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
    parser.add_argument(
        "--utc",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show times in UTC instead of the local time zone",
    )


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="for cron: print nothing when all went well; failures still go to stderr, "
        "and the exit code is the same",
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
    parser.add_argument(
        "--utc", action="store_true", help="show times in UTC instead of the local time zone"
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
        "  stsyncctl process --credential-id 3f2b           # one credential, by an id prefix\n"
        "  stsyncctl process -q -e production               # for cron: silent unless it fails\n"
        "  stsyncctl process --dry-run --estimate -e integration",
    )
    process.add_argument("-e", "--environment", choices=ENVIRONMENTS, help="only this environment")
    process.add_argument(
        "-c", "--company-id", metavar="ID", type=_non_empty, help="only this company"
    )
    process.add_argument(
        "--credential-id", metavar="ID", type=_id, help=f"only this credential ({ID_HELP})"
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
    _add_quiet(process)

    # status -----------------------------------------------------------------------------------
    status = _command(
        commands,
        "status",
        "show recent syncs and statistics",
        "List recent syncs, newest first, then statistics over every matching sync. The table\n"
        "cuts long error messages: `stsyncctl show SYNC_ID` prints one sync in full.",
        "  stsyncctl status\n"
        "  stsyncctl status -r                  # what is running now\n"
        "  stsyncctl status -f --last-24h       # what failed today\n"
        "  stsyncctl status -f -e production -d invoices --since 2h\n"
        "  stsyncctl status --run 3f2b          # the syncs of one run (an id prefix will do)\n"
        "  stsyncctl --json-output status -c 1042 --limit 10",
    )
    status.add_argument(
        "-c", "--company-id", metavar="ID", type=_non_empty, help="only this company"
    )
    status.add_argument(
        "--run", metavar="RUN_ID", type=_id, help=f"only the syncs of this run ({ID_HELP})"
    )
    status.add_argument("-e", "--environment", choices=ENVIRONMENTS, help="only this environment")
    status.add_argument(
        "-d", "--data-type", choices=[d.value for d in DataType], help="only this data type"
    )
    only = status.add_mutually_exclusive_group()
    only.add_argument("-r", "--running-only", action="store_true", help="only running syncs")
    only.add_argument(
        "-f",
        "--failed-only",
        action="store_true",
        help="only failed, timed-out or interrupted syncs (what retry picks up)",
    )
    window = status.add_mutually_exclusive_group()
    window.add_argument(
        "--last-24h", action="store_true", help="only syncs started in the last 24 h"
    )
    window.add_argument(
        "--since",
        metavar="WHEN",
        type=_non_empty,
        help="only syncs started since WHEN: ISO 8601 (2024-05-01, 2024-05-01T06:00; local time "
        "unless it has a zone, or with --utc) or a time ago: 30m, 2h, 3d, 1w",
    )
    status.add_argument(
        "--limit",
        type=_positive_int(STATUS_LIMIT_MAX),
        default=STATUS_LIMIT_DEFAULT,
        metavar="N",
        help=f"show at most N syncs (default: {STATUS_LIMIT_DEFAULT})",
    )

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
        default=RETRY_MAX_AGE_HOURS_DEFAULT,
        metavar="HOURS",
        help=f"only failures newer than this (default: {RETRY_MAX_AGE_HOURS_DEFAULT:g})",
    )
    retry.add_argument(
        "--max-retries",
        type=_positive_int(),
        default=RETRY_MAX_RETRIES_DEFAULT,
        metavar="N",
        help=f"give up on a sync after N attempts (default: {RETRY_MAX_RETRIES_DEFAULT})",
    )
    retry.add_argument(
        "--exclude-auth-errors",
        action="store_true",
        help="skip authentication failures (they need a fixed credential, not a retry)",
    )
    retry.add_argument("--dry-run", action="store_true", help="show what would be retried")
    _add_run_knobs(retry)
    _add_quiet(retry)

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

    listing = credential_command(
        "list",
        "list the credentials, or those matching the filters",
        "  stsyncctl credentials list\n"
        "  stsyncctl credentials list --status error --environment production\n"
        "  stsyncctl credentials list -c 1042",
    )
    listing.add_argument(
        "--status", choices=CREDENTIAL_STATUSES, help="only credentials in this status"
    )
    listing.add_argument("-e", "--environment", choices=ENVIRONMENTS, help="only this environment")
    listing.add_argument(
        "-c", "--company-id", metavar="ID", type=_non_empty, help="only this company"
    )

    show = credential_command(
        "show",
        "show one credential (never its secret)",
        "  stsyncctl credentials show 3f2b8c1e-0d4a-4e5f-9a7b-1c2d3e4f5a6b\n"
        "  stsyncctl credentials show 3f2b      # a unique prefix will do",
    )
    show.add_argument("credential_id", metavar=CREDENTIAL_ID, type=_id, help=ID_HELP)

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

    update = credential_command(
        "update",
        "change a credential: only what is given changes",
        "  stsyncctl credentials update ID --company-name 'Acme Heating'\n"
        "  stsyncctl credentials update ID --client-id cid.new --client-secret-file new.secret\n"
        "  stsyncctl credentials update ID --no-schedule",
    )
    update.add_argument("credential_id", metavar=CREDENTIAL_ID, type=_id, help=ID_HELP)
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

    for name, help_text in (
        ("enable", "include a credential in scheduled runs again (clears its error state)"),
        ("disable", "leave a credential out of scheduled runs"),
    ):
        toggle = credential_command(name, help_text, f"  stsyncctl credentials {name} ID")
        toggle.add_argument("credential_id", metavar=CREDENTIAL_ID, type=_id, help=ID_HELP)

    remove = credential_command(
        "remove",
        "remove a credential (its history is kept unless --purge)",
        "  stsyncctl credentials remove ID        # asks on a terminal\n"
        "  stsyncctl credentials remove -y ID\n"
        "  stsyncctl credentials remove -y --purge ID   # its sync history goes too",
    )
    remove.add_argument("credential_id", metavar=CREDENTIAL_ID, type=_id, help=ID_HELP)
    remove.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    remove.add_argument(
        "--purge",
        action="store_true",
        help="also delete its sync history, cursors and dead letters (without it they are kept and "
        "the credential is listed as removed with `credentials list --status removed`)",
    )

    test = credential_command(
        "test",
        "check a credential: fetch a token and one page, read-only",
        "  stsyncctl credentials test ID",
    )
    test.add_argument("credential_id", metavar=CREDENTIAL_ID, type=_id, help=ID_HELP)

    # schedules, runs, cancel, report, health --------------------------------------------------
    schedules = _command(
        commands,
        "schedules",
        "show the schedules; pause or resume one",
        "Each configured schedule: cron, timezone, action, filters, last and next fire time, and "
        "whether an operator paused it. A paused schedule's ticks are skipped by every instance "
        "until it is resumed (kept in the database: restarts do not resume it).",
        "  stsyncctl schedules\n  stsyncctl schedules pause hourly\n  stsyncctl schedules resume hourly",
    )
    schedule_actions = schedules.add_subparsers(dest="action", metavar="ACTION", required=False)
    for verb, text in (
        ("pause", "skip the schedule's ticks on every instance until resumed"),
        ("resume", "let a paused schedule fire again at its next tick"),
    ):
        action = _command(
            schedule_actions,
            verb,
            text,
            text[0].upper() + text[1:] + ".",
            f"  stsyncctl schedules {verb} hourly",
        )
        action.add_argument(
            "name", metavar="NAME", help="the schedule's name (see: stsyncctl schedules)"
        )

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
        default=RUNS_LIMIT_DEFAULT,
        metavar="N",
        help=f"show at most N runs (default: {RUNS_LIMIT_DEFAULT})",
    )

    cancel = _command(
        commands,
        "cancel",
        "cancel a running run or sync",
        "Cancel a running run (all its syncs) or a single running sync; what they committed stays.",
        "  stsyncctl cancel RUN_ID      # ids from `stsyncctl runs` or `stsyncctl status -r`",
    )
    cancel.add_argument("target", metavar="RUN_OR_SYNC_ID", type=_id, help=ID_HELP)

    show_sync = _command(
        commands,
        "show",
        "show one sync in full, its whole error message included",
        "One sync: company, tenant, status, times, counts, and the whole error message (the\n"
        "status table cuts it, and with it ServiceTitan's traceId).",
        "  stsyncctl show 0f3c2a9e-5b1d-4c8e-9f7a-2b3c4d5e6f70\n"
        "  stsyncctl show 0f3c                  # a unique prefix will do\n"
        "  stsyncctl --json-output show 0f3c",
    )
    show_sync.add_argument("sync_id", metavar="SYNC_ID", type=_id, help=ID_HELP)

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
        "--credential-id", metavar="ID", type=_id, help=f"only this credential ({ID_HELP})"
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
        type=_positive_int(DEAD_LETTERS_LIMIT_MAX),
        default=STATUS_LIMIT_DEFAULT,
        metavar="N",
        help=(
            f"show at most N (default: {STATUS_LIMIT_DEFAULT}; the count below the table is of "
            "all that match)"
        ),
    )

    _command(
        commands,
        "health",
        "check that the daemon answers, and its database",
        "The daemon's health: status (ok, degraded or unhealthy, with the reasons), version, uptime,\n"
        "database, background loops, running syncs. Exits 0 only when the status is ok.",
        "  stsyncctl health",
    )
    return parser


def command_path(args: argparse.Namespace) -> tuple[str, ...]:
    """The command given as the path its handler is bound to: `("status",)`,
    `("credentials", "add")`."""
    action = getattr(args, "action", None)
    return (args.command,) if action is None else (args.command, action)


def subparser(parser: argparse.ArgumentParser, path: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of the command given, so usage errors show that command's usage."""
    found = parser
    for name in path:
        for action in found._actions:
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                found = action.choices[name]
                break
    return found
