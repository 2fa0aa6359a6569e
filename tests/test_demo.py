"""`./stsync demo` end to end: it syncs the good companies, fails the broken one, and stops cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.timeout(240)
def _syncs_by_company(socket_path: Path) -> dict[str, set[tuple[str, str | None]]]:
    """(status, error category) of every sync so far, by company, as `stsyncctl status` tells."""
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "stsync_daemon.cli.stsyncctl",
            "--socket",
            str(socket_path),
            "--json-output",
            "status",
            "--limit",
            "200",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    by_company: dict[str, set[tuple[str, str | None]]] = {}
    for sync in json.loads(status.stdout)["syncs"]:
        by_company.setdefault(sync["company_id"], set()).add(
            (sync["status"], sync["error_category"])
        )
    return by_company


COMPANIES = {"acme", "bright", "cobalt", "delta"}


async def test_demo_syncs_fails_the_broken_company_and_leaves_nothing_running() -> None:
    state = Path(tempfile.mkdtemp(prefix="stsync-demo-test-"))
    os.chmod(state, 0o755)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stsync_daemon.demo",
        "--state-dir",
        str(state),
        "--cron",
        "*/5 * * * * *",
        "--metrics-port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output: list[str] = []
    socket_path = state / "run" / "control.sock"
    try:
        # A tick can fire while the demo is still registering its companies: read runs until one
        # has synced them all.
        by_company: dict[str, set[tuple[str, str | None]]] = {}

        def settled() -> bool:
            # Every company has a finished sync (another run may have one running meanwhile).
            return by_company.keys() >= COMPANIES and all(
                any(status != "running" for status, _ in syncs) for syncs in by_company.values()
            )

        async with asyncio.timeout(150):
            while not settled():
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo exited early:\n" + "".join(output)
                output.append(line)
                if "run.finished" in line:
                    by_company = await asyncio.to_thread(_syncs_by_company, socket_path)
        text = "".join(output)
        assert (
            "control socket" in text
            and "stsyncctl" in text
            and "process --dry-run --estimate" in text
        )
        assert by_company["cobalt"] - {("running", None)} == {("failed", "auth")}
        for good in ("acme", "bright", "delta"):
            assert ("completed", None) in by_company[good], by_company
            assert all(category != "auth" for _, category in by_company[good])
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(90):
            rest = await proc.stdout.read()
            await proc.wait()
    output.append(rest.decode())
    assert proc.returncode == 0, "".join(output)[-3000:]
    assert "nothing left running" in "".join(output)
    assert processes_mentioning(str(state)) == []
