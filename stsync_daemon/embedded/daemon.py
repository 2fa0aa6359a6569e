"""`stsyncd run` as a child process, driven over its control socket, for the demo, tests and benchmarks.

Its files sit under one directory as a service's would: `stsync.toml`, the control socket
`run/control.sock` and the JSON log `stsyncd.log`. Requests return the raw (status, body) rather than
stsyncctl's errors, so that callers can check any answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import aiohttp
import orjson

from ..control.protocol import NDJSON
from ..errors import StsyncError

# How long start-up may take, migrations included, before we give up on the child.
READY_SECONDS = 60.0


class DaemonProcess:
    """One `stsyncd run --config DIRECTORY/stsync.toml` child; `start()` spawns it."""

    def __init__(
        self,
        directory: Path,
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        new_session: bool = False,
        command_prefix: Sequence[str] = (),
    ) -> None:
        """`settings` become the config file (None: the caller wrote it); `env` adds to ours;
        `new_session` keeps a terminal's Ctrl-C from a child that its caller stops itself;
        `command_prefix` runs it through a program that execs it (`setpriv` to run as a user)."""
        self.directory = directory
        self.config = directory / "stsync.toml"
        self.socket = directory / "run" / "control.sock"
        self.log = directory / "stsyncd.log"
        # Our own service manager's socket is not the child's to notify, unless a test hands it one.
        self.env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"} | dict(env or {})
        self.new_session = new_session
        self.command_prefix = tuple(command_prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        if settings is not None:
            directory.mkdir(parents=True, exist_ok=True)
            control = {**settings.get("control", {}), "socket": str(self.socket)}
            logging = {**settings.get("logging", {}), "format": "json"}  # what events() reads
            self.config.write_text(_toml({**settings, "control": control, "logging": logging}))

    async def start(self) -> Self:
        """Spawn it and return once /v1/health answers 200; fail with the log's tail if it exits."""
        proc = self.proc = self._spawn()
        try:
            async with asyncio.timeout(READY_SECONDS):
                while proc.poll() is None:
                    with contextlib.suppress(OSError, aiohttp.ClientError):
                        status, _ = await self.request("GET", "/v1/health")
                        if status == 200:
                            return self
                    await asyncio.sleep(0.1)
        except TimeoutError:
            await self.stop(grace_seconds=0)
            raise StsyncError(
                f"stsyncd did not answer on {self.socket} within {READY_SECONDS:g} s "
                f"(see {self.log})"
            ) from None
        tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        raise StsyncError("stsyncd exited during start-up: " + " | ".join(tail))

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request; the answer is parsed JSON, a list of events for NDJSON, None when empty."""
        # No total timeout: a process request streams for as long as its run takes.
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket)),
                timeout=aiohttp.ClientTimeout(total=None),
            ) as session,
            session.request(method, f"http://localhost{path}", json=body) as response,
        ):
            raw = await response.read()
            if response.content_type == NDJSON:
                return response.status, [orjson.loads(line) for line in raw.splitlines() if line]
            return response.status, orjson.loads(raw) if raw else None

    async def run(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a process or retry and return the summary its `run.finished` event carries."""
        status, events = await self.request("POST", path, body)
        finished = [e for e in events if e.get("event") == "run.finished"] if status == 200 else []
        if not finished:
            raise StsyncError(f"POST {path} answered {status} without run.finished: {events}")
        summary: dict[str, Any] = finished[0]["summary"]
        return summary

    @property
    def pid(self) -> int:
        """The child's process id, for reading /proc."""
        return self._started().pid

    def poll(self) -> int | None:
        """The exit code once the child has exited, else None (also before `start()`)."""
        return None if self.proc is None else self.proc.poll()

    def signal(self, signum: int) -> None:
        """Send a signal as an operator or systemd would."""
        self._started().send_signal(signum)

    async def wait(self, *, kill_after_seconds: float = 60.0) -> int:
        """The exit code; a child still running after `kill_after_seconds` is killed, and this fails."""
        proc = self._started()
        try:
            return await asyncio.to_thread(proc.wait, kill_after_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
            raise StsyncError(
                f"stsyncd did not exit within {kill_after_seconds:g} s; killed it"
            ) from None

    async def stop(self, *, grace_seconds: float = 60.0) -> None:
        """SIGTERM, and SIGKILL after `grace_seconds`: whoever started it leaves nothing running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(StsyncError):
                await self.wait(kill_after_seconds=grace_seconds)

    def events(self) -> list[dict[str, Any]]:
        """The log's records so far; lines that are not JSON (a traceback) are skipped."""
        out = []
        for line in self.log.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(line))
        return out

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [
            *self.command_prefix,
            sys.executable,
            "-m",
            "stsync_daemon.cli.stsyncd",
            "run",
            "--config",
            str(self.config),
        ]
        with self.log.open("ab") as log:
            return subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=log, start_new_session=self.new_session
            )

    def _started(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise StsyncError("stsyncd has not been started")
        return self.proc


def _toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """Just enough TOML for a config dict: tables, arrays of tables, JSON-compatible scalars."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and value and isinstance(value[0], dict)
        ):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in tables:
        name = f"{prefix}{key}"
        for table in value if isinstance(value, list) else [value]:
            lines.append(f"\n[[{name}]]" if isinstance(value, list) else f"\n[{name}]")
            lines.append(_toml(table, f"{name}."))
    return "\n".join(lines)
