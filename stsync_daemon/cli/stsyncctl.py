"""stsyncctl: the operator's command line; it talks only to the daemon's control socket.

Parse, then run: arguments become the protocol's request models (bad values exit 2 before any
connection), then one asyncio run talks to the daemon. Exit codes are a contract (see `exits`).
The command line is built in `parser`, requests in `requests`, commands run in `handlers`; this
module binds each command to its request builder and handler in one table, `COMMANDS`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ..config import default_socket_path
from . import handlers, render, requests
from .client import DaemonError, DaemonUnreachable
from .exits import EXIT_FAILED, EXIT_INTERRUPTED, exit_code_for
from .handlers import Context, Handler
from .parser import build_parser, command_path, subparser
from .requests import Prepare, UsageError


@dataclass(frozen=True)
class Command:
    """What a command runs: its request builder (none: it sends no request body) and handler."""

    handler: Handler
    prepare: Prepare | None = None


# Every command the parser accepts, by its path (a test holds the two in step).
COMMANDS: Mapping[tuple[str, ...], Command] = {
    ("process",): Command(handlers.process, requests.prepare_process),
    ("status",): Command(handlers.status, requests.prepare_status),
    ("retry",): Command(handlers.retry, requests.prepare_retry),
    ("credentials", "list"): Command(handlers.credentials_list, requests.prepare_credentials_list),
    ("credentials", "show"): Command(handlers.credentials_show),
    ("credentials", "add"): Command(handlers.credentials_add, requests.prepare_credentials_add),
    ("credentials", "update"): Command(
        handlers.credentials_update, requests.prepare_credentials_update
    ),
    ("credentials", "enable"): Command(handlers.credentials_toggle),
    ("credentials", "disable"): Command(handlers.credentials_toggle),
    ("credentials", "remove"): Command(handlers.credentials_remove),
    ("credentials", "test"): Command(handlers.credentials_test),
    ("schedules",): Command(handlers.schedules),
    ("schedules", "pause"): Command(handlers.schedule_pause),
    ("schedules", "resume"): Command(handlers.schedule_pause),
    ("runs",): Command(handlers.runs),
    ("cancel",): Command(handlers.cancel),
    ("show",): Command(handlers.show),
    ("report",): Command(handlers.report),
    ("dead-letters",): Command(handlers.dead_letters, requests.prepare_dead_letters),
    ("health",): Command(handlers.health),
}


def _usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)


def socket_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    """`--socket`, else `$STSYNC_SOCKET`, else the daemon's default."""
    if args.socket:
        return Path(args.socket)
    if environ.get("STSYNC_SOCKET"):
        return Path(environ["STSYNC_SOCKET"])
    return default_socket_path()


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
        quiet=bool(getattr(args, "quiet", False)),
    )
    # Tables show local time unless --utc; set before the loop starts, whose tasks inherit it.
    render.DISPLAY_UTC.set(bool(args.utc))
    path = command_path(args)
    command = COMMANDS[path]
    try:
        if command.prepare is not None:
            try:
                ctx.request = command.prepare(args, ctx.stdin)
            except UsageError as error:
                _usage_error(subparser(parser, path), str(error))
        code = asyncio.run(command.handler(ctx, args))
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
