"""Fixtures of the CLI tests: the CLI as a subprocess, and a canned protocol server on a socket."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pwd
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stsync_daemon.cli import stsyncctl

from .fake_daemon import FakeDaemon

STSYNCCTL = Path(sys.executable).parent / "stsyncctl"


@dataclass(frozen=True)
class Result:
    """What a CLI subprocess left behind."""

    code: int
    stdout: str
    stderr: str


def cli_env(**extra: str) -> dict[str, str]:
    """A predictable environment: UTC times, wide tables, no inherited socket."""
    env = {k: v for k, v in os.environ.items() if k not in ("STSYNC_SOCKET", "RUNTIME_DIRECTORY")}
    env.update({"TZ": "UTC", "COLUMNS": "200", "LC_ALL": "C.UTF-8"})
    env.update(extra)
    return env


async def run_cli(
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> Result:
    """Run the installed `stsyncctl` console script; the event loop keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        str(STSYNCCTL),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or cli_env(),
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else b""), timeout
    )
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short, world-traversable temporary directory (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="stctl-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def fake_daemon(short_tmp: Path) -> AsyncIterator[FakeDaemon]:
    """The canned protocol server, listening on `short_tmp/control.sock`."""
    daemon = await FakeDaemon(short_tmp / "control.sock").start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def run_as_nobody(argv: list[str]) -> tuple[int, str, str]:
    """Run `main()` in a forked child that dropped to `nobody`.

    A subprocess cannot do this here: the interpreter lives under /root, which `nobody` may not
    read. The child reuses the parent's already imported modules instead.
    """
    nobody = pwd.getpwnam("nobody")
    # Import lazily loaded modules while we can still read them (and never from a running loop).
    with contextlib.redirect_stderr(io.StringIO()):
        stsyncctl.main(["--socket", "/nonexistent/stsync.sock", "status"])
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.close(out_r)
            os.close(err_r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            sys.stdout = io.TextIOWrapper(io.FileIO(out_w, "w"), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(err_w, "w"), write_through=True)
            sys.stdin = io.StringIO("")
            code = stsyncctl.main(argv)
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as out, os.fdopen(err_r) as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stdout, stderr
