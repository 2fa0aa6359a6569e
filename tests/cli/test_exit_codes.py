"""Unit tests of how failures become one line and a documented exit code."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from stsync_daemon.cli.client import (
    DaemonError,
    DaemonUnreachable,
    _error_from_answer,
    describe_connect_error,
)
from stsync_daemon.cli.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    exit_code_for,
)

SOCKET = Path("/run/stsync/control.sock")


def test_exit_code_values_are_the_documented_ones() -> None:
    assert (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED) == (
        0,
        1,
        2,
        3,
        130,
    )


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (errno.ENOENT, "no socket at /run/stsync/control.sock"),
        (errno.EACCES, "permission denied on the daemon's socket /run/stsync/control.sock"),
        (errno.ECONNREFUSED, "connection refused on /run/stsync/control.sock"),
        (errno.ENOTSOCK, "is not a socket"),
        (errno.EMFILE, "cannot reach the daemon at /run/stsync/control.sock"),
    ],
)
def test_connect_errors_are_told_apart(number: int, expected: str) -> None:
    line = describe_connect_error(SOCKET, OSError(number, "strerror"))
    assert expected in line
    assert "\n" not in line


def test_connect_errors_say_what_to_check() -> None:
    missing = describe_connect_error(SOCKET, OSError(errno.ENOENT, "x"))
    assert "stsync.service" in missing and "--socket" in missing
    denied = describe_connect_error(SOCKET, OSError(errno.EACCES, "x"))
    assert "stsync group" in denied
    refused = describe_connect_error(SOCKET, OSError(errno.ECONNREFUSED, "x"))
    assert "stsync.service" in refused


def _answer(status: int, body: object) -> Exception:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _error_from_answer(SOCKET, status, raw)


def test_forbidden_is_a_refusal_exit_3() -> None:
    bare = _answer(403, b"")
    assert isinstance(bare, DaemonUnreachable)
    assert "refused this user" in str(bare) and "stsync group" in str(bare)
    assert exit_code_for(bare) == 3


def test_forbidden_says_what_the_daemon_says_and_no_wrong_hint() -> None:
    """A member refused a credential change is in the group already: no usermod hint for them."""
    message = "not authorised: credentials add changes the configuration, which only root may do"
    error = _answer(403, {"message": message, "code": "forbidden"})
    assert isinstance(error, DaemonUnreachable) and exit_code_for(error) == 3
    assert str(error).endswith(f"refused this user (uid {os.getuid()}): {message}")
    assert "usermod" not in str(error)


def test_unavailable_is_exit_3_with_the_daemons_reason() -> None:
    error = _answer(503, {"message": "database unavailable: refused", "code": "unavailable"})
    assert isinstance(error, DaemonUnreachable)
    assert "database unavailable" in str(error)
    assert exit_code_for(error) == 3


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, "not_found"), (409, "conflict"), (400, "bad_request"), (500, "internal")],
)
def test_rejected_requests_exit_1_with_the_daemons_message(status: int, code: str) -> None:
    error = _answer(status, {"message": "no credential with id x", "code": code})
    assert isinstance(error, DaemonError)
    assert error.code == code and str(error) == "no credential with id x"
    assert exit_code_for(error) == 1


def test_answers_without_an_error_body() -> None:
    unknown = _answer(404, b"404: Not Found")
    assert isinstance(unknown, DaemonUnreachable)  # not stsyncd, or an older one
    assert exit_code_for(_answer(500, b"oops")) == 1


def test_interrupt_and_unexpected() -> None:
    assert exit_code_for(KeyboardInterrupt()) == 130
    assert exit_code_for(RuntimeError("x")) == 1
