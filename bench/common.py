"""Shared pieces of the benchmarks: a private PostgreSQL, a sandbox process, timing and reporting."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from stsync_daemon.embedded.postgres import PrivateCluster  # noqa: E402

# What the benchmarks' PostgreSQL looks like: durable (fsync on), sized like a small server.
PG_SETTINGS = {"shared_buffers": "1GB", "max_wal_size": "8GB", "checkpoint_timeout": "30min"}


@contextmanager
def private_postgres(base: Path | None = None) -> Iterator[PrivateCluster]:
    """A fresh durable cluster for one benchmark."""
    base = base or Path(tempfile.mkdtemp(prefix="stsync-bench-"))
    os.chmod(base, 0o755)
    cluster = PrivateCluster(base / "pg", fsync=True, extra_settings=PG_SETTINGS)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class SandboxProcess:
    """`stsync-sandbox` in its own process, so it never shares a core's time slice with the sync."""

    proc: subprocess.Popen[bytes]
    info: dict[str, Any]

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_sandbox(
    tenants: list[dict[str, Any]], directory: Path, **settings: Any
) -> SandboxProcess:
    """Start a sandbox with the given tenants and settings; returns once it serves."""
    spec = {"app_keys": ["ak1.sandbox"], "tenants": tenants, **settings}
    path = directory / "sandbox.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stsync_daemon.sandbox",
            "--port",
            "0",
            "--tenants",
            str(path),
            "--json",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"the sandbox did not start (exit {proc.wait()})")
    return SandboxProcess(proc, orjson.loads(line))


def peak_rss_mb_children() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def summarize(values: list[float]) -> dict[str, float]:
    """Median with min and max: noisy shared machines make single numbers meaningless."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [
        [f"{c:,.1f}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for c, w in zip(row, widths, strict=True)))


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_bytes(orjson.dumps({"machine": machine(), **data}, option=orjson.OPT_INDENT_2))
    return path
