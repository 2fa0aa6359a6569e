"""stsyncctl's exit codes: a contract with operators' scripts, documented in every `--help`."""

from __future__ import annotations

from .client import REFUSING_CODES, DaemonError, DaemonUnreachable

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
       or the daemon rejected the request (unknown or ambiguous id, a -c/--credential-id
       that matches no credential, conflict, invalid value)
  2    usage error: a bad option or value (one line naming it, plus the usage)
  3    the daemon is not reachable or refuses us: no socket, permission denied, connection
       refused, this user not allowed, or the daemon cannot serve now
       (check: systemctl status stsync.service; is your user in the stsync group?)
  130  interrupted (Ctrl-C); a run goes on in the daemon: stsyncctl cancel RUN_ID stops it"""


def exit_code_for(error: BaseException) -> int:
    """The documented exit code of an error that ends a command."""
    if isinstance(error, DaemonUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(error, DaemonError):
        return EXIT_UNREACHABLE if error.code in REFUSING_CODES else EXIT_FAILED
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILED
