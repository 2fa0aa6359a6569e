"""The daemon cannot be used: no socket, a stale socket, a socket we may not open. Always exit 3,
one line on stderr naming the socket and what to check, nothing on stdout, no traceback."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import run_as_nobody, run_cli
from .fake_daemon import FakeDaemon

COMMANDS = [
    ["status"],
    ["--json-output", "process"],
    ["retry", "--dry-run"],
    ["credentials", "list"],
    ["schedules"],
    ["runs"],
    ["report"],
]


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
async def test_no_such_socket(short_tmp: Path, argv: list[str]) -> None:
    path = short_tmp / "missing.sock"
    result = await run_cli("--socket", str(path), *argv)
    assert result.code == 3
    assert result.stdout == ""
    line = _one_line(result.stderr)
    assert line.startswith(f"stsyncctl: cannot reach the daemon: no socket at {path}")
    assert "stsync.service" in line


@pytest.fixture
def stale_socket(short_tmp: Path) -> Iterator[Path]:
    """A socket file nobody listens on: what a crashed daemon leaves behind."""
    path = short_tmp / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    yield path


async def test_stale_socket_is_connection_refused(stale_socket: Path) -> None:
    result = await run_cli("--socket", str(stale_socket), "status")
    assert result.code == 3 and result.stdout == ""
    line = _one_line(result.stderr)
    assert line.startswith(f"stsyncctl: connection refused on {stale_socket}: nothing is listening")
    assert "stsync.service" in line


async def test_not_a_socket(short_tmp: Path) -> None:
    path = short_tmp / "plain-file"
    path.write_text("")
    result = await run_cli("--socket", str(path), "status")
    assert result.code == 3
    _one_line(result.stderr)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_socket_without_permission(short_tmp: Path) -> None:
    path = short_tmp / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        os.chmod(path, 0o000)
        code, stdout, stderr = run_as_nobody(["--socket", str(path), "status"])
    finally:
        listener.close()
    assert code == 3, stderr
    assert stdout == ""
    line = _one_line(stderr)
    assert line.startswith(f"stsyncctl: permission denied on the daemon's socket {path}")
    assert "stsync group" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_json_output_when_refused_prints_nothing_on_stdout(short_tmp: Path) -> None:
    path = short_tmp / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        os.chmod(path, 0o000)
        code, stdout, stderr = run_as_nobody(["--socket", str(path), "--json-output", "status"])
    finally:
        listener.close()
    assert (code, stdout) == (3, "")
    assert "permission denied" in stderr


async def test_daemon_stopped_mid_session(fake_daemon: FakeDaemon) -> None:
    """The server answered once, then stopped; aiohttp leaves the socket file: connection refused."""
    ok = await run_cli("--socket", str(fake_daemon.socket), "health")
    assert ok.code == 0
    await fake_daemon.stop()
    gone = await run_cli("--socket", str(fake_daemon.socket), "health")
    assert gone.code == 3 and "connection refused on" in gone.stderr
