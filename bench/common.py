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

from stsync_daemon.embedded.daemon import DaemonProcess  # noqa: E402
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


# -- shared by the daemon benchmarks -------------------------------------------------------------

APP_KEY = "ak1.sandbox"


def fmt(s: dict[str, float], digits: int = 0) -> str:
    """`median (min-max)` of a `summarize()` result."""
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def tenant_spec(tenant_id: int, customers: int, invoices: int, seed: int = 1) -> dict[str, Any]:
    """A sandbox tenant whose client id and secret derive from its id."""
    return {
        "tenant_id": tenant_id,
        "environment": "production",
        "client_id": f"cid.{tenant_id}",
        "client_secret": f"cs.secret.{tenant_id}",
        "customers": customers,
        "invoices": invoices,
        "seed": seed,
    }


def sandbox_admin(base_url: str, method: str, path: str, body: Any = None) -> Any:
    """Call the sandbox's admin API (`/_sandbox/...`) synchronously."""
    import urllib.request

    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(
        f"{base_url}/_sandbox/{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as resp:
        return orjson.loads(resp.read())


def sandbox_requests(counters: dict[str, Any], tenant_id: int | None = None) -> int:
    """API requests served (token requests excluded), from `/_sandbox/counters`."""
    return sum(
        r["count"]
        for r in counters["requests"]
        if r["kind"] != "token" and (tenant_id is None or r["tenant_id"] == tenant_id)
    )


def run_sync_child(
    settings_path: Path, credential: str, data_types: str = "customers,invoices", mode: str = "full"
) -> dict[str, Any]:
    """One sync in `bench/sync_child.py` (its own process); returns its JSON line."""
    # STSYNC_BENCH_PYSPY=FILE: the child under py-spy (the `bench` extra), collapsed stacks to FILE.
    profile = os.environ.get("STSYNC_BENCH_PYSPY")
    spy = ["py-spy", "record", "--format", "raw", "--rate", "250", "-o", profile, "--"]
    out = subprocess.run(
        [
            *(spy if profile else []),
            sys.executable,
            str(ROOT / "bench" / "sync_child.py"),
            "--settings",
            str(settings_path),
            "--credential",
            credential,
            "--data-types",
            data_types,
            "--mode",
            mode,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"sync failed: {out.stderr.strip()[-3000:]}")
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


def settings_dict(sandbox_url: str, dsn: str, key_file: Path, **sections: Any) -> dict[str, Any]:
    """A stsync configuration aimed at a sandbox (ServiceTitan's rate limit lifted unless given)."""
    data: dict[str, Any] = {
        "database": {"dsn": dsn},
        "secrets": {"key_file": str(key_file)},
        "servicetitan": {
            "app_key": APP_KEY,
            "requests_per_second": 1000,
            "environments": {
                env: {
                    "auth_url": f"{sandbox_url}/{env}/auth",
                    "api_url": f"{sandbox_url}/{env}/api",
                }
                for env in ("production", "integration")
            },
        },
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return data


async def prepare_database(dsn: str, work: Path) -> Path:
    """Migrate the schema and write a secrets key; returns the key file."""
    import asyncpg

    from stsync_daemon.store.crypto import generate_key
    from stsync_daemon.store.migrate import migrate

    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    key = work / "secrets.key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    return key


async def register(dsn: str, key: Path, specs: list[dict[str, Any]]) -> list[str]:
    """Register one credential per sandbox tenant through the store; returns their ids."""
    from pydantic import SecretStr

    from stsync_daemon.enums import Environment
    from stsync_daemon.store.credentials import CredentialStore, NewCredential
    from stsync_daemon.store.crypto import SecretCipher
    from stsync_daemon.store.db import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        store = CredentialStore(pool, SecretCipher.from_file(key))
        ids = []
        for spec in specs:
            credential = await store.add(
                NewCredential(
                    f"co{spec['tenant_id']}",
                    f"Company {spec['tenant_id']}",
                    Environment(spec["environment"]),
                    spec["tenant_id"],
                    spec["client_id"],
                    SecretStr(spec["client_secret"]),
                )
            )
            ids.append(str(credential.id))
        return ids
    finally:
        await pool.close()


async def reset_records(dsn: str) -> None:
    """Empty the record tables and cursors: the next sync is a first, full one."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "TRUNCATE servicetitan.customers, servicetitan.invoices; DELETE FROM stsync.cursors"
        )
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def proc_status_kb(pid: int, field: str) -> int:
    """A `VmHWM`/`VmRSS`-style field of /proc/PID/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Daemon(DaemonProcess):
    """stsyncd as the benchmarks run it: no metrics listener, and a log of warnings only."""

    def __init__(self, directory: Path, settings: dict[str, Any]) -> None:
        metrics = {"enabled": False, **settings.get("metrics", {})}
        logging = {"level": "WARNING", **settings.get("logging", {})}
        super().__init__(directory, {**settings, "metrics": metrics, "logging": logging})


def work_dir(prefix: str) -> Path:
    """A scratch directory the PostgreSQL user can enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path
