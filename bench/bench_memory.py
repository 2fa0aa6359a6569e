"""Memory: peak RSS of the daemon syncing a small and a ten times larger tenant.

Each run starts a fresh `stsyncd` subprocess, asks it (over the control socket) for a full process
of one tenant, and reads the daemon's VmHWM from /proc/PID/status just before stopping it. A
streaming sync keeps memory flat: target growth <= 20% from the small to the large tenant, and at
most 200 MB in absolute terms.

    .venv/bin/python bench/bench_memory.py [--small 100000 --large 1000000 --runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
from typing import Any

from common import (
    Daemon,
    fmt,
    prepare_database,
    print_table,
    private_postgres,
    proc_status_kb,
    register,
    reset_records,
    settings_dict,
    start_sandbox,
    summarize,
    tenant_spec,
    verdict,
    work_dir,
    write_result,
)

GROWTH = 0.20
ABSOLUTE_MB = 200.0


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = work_dir("stsync-mem-")
    # Records split evenly between customers (~1.1 KB) and invoices (~2.4 KB).
    sizes = {"small": args.small, "large": args.large}
    specs = {
        name: tenant_spec(i + 1, n - n // 2, n // 2) for i, (name, n) in enumerate(sizes.items())
    }
    sandbox = start_sandbox(list(specs.values()), work, rate_limit_per_second=100_000)
    peaks: dict[str, list[float]] = {name: [] for name in sizes}
    rates: dict[str, list[float]] = {name: [] for name in sizes}
    try:
        with private_postgres(work) as cluster:
            dsn = cluster.dsn()
            key = await prepare_database(dsn, work)
            ids = dict(zip(specs, await register(dsn, key, list(specs.values())), strict=True))
            settings = settings_dict(sandbox.base_url, dsn, key)
            for run in range(args.runs):
                for name, count in sizes.items():
                    await reset_records(dsn)
                    daemon = await Daemon(work / f"daemon-{name}-{run}", settings).start()
                    try:
                        summary = await daemon.run("/v1/process", {"credential_id": ids[name]})
                        if summary["total_records_processed"] != count:
                            raise SystemExit(f"{name}: synced {summary}")
                        rates[name].append(count / summary["execution_time_seconds"])
                        peaks[name].append(proc_status_kb(daemon.pid, "VmHWM") / 1024)
                    finally:
                        await daemon.stop()
    finally:
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    small, large = statistics.median(peaks["small"]), statistics.median(peaks["large"])
    growth = large / small - 1
    return {
        "sizes": sizes,
        "peak_rss_mb": {name: summarize(v) for name, v in peaks.items()},
        "records_per_second": {name: summarize(v) for name, v in rates.items()},
        "growth": growth,
        "target_growth": GROWTH,
        "target_absolute_mb": ABSOLUTE_MB,
        "met": growth <= GROWTH and large <= ABSOLUTE_MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    r = asyncio.run(bench(args))
    rows = [
        [
            f"{r['sizes'][name]:,}",
            fmt(r["peak_rss_mb"][name], 1),
            fmt(r["records_per_second"][name]),
        ]
        for name in ("small", "large")
    ]
    rows.append(
        [
            "growth",
            f"{r['growth'] * 100:+.1f}%",
            verdict(r["met"]),
        ]
    )
    print_table(
        f"Memory: daemon peak RSS (VmHWM, MB, median (min-max) of {args.runs}); "
        f"target growth <= {GROWTH:.0%} and <= {ABSOLUTE_MB:.0f} MB",
        ["records", "peak RSS MB", "records/s"],
        rows,
    )
    print("results:", write_result("memory", r))


if __name__ == "__main__":
    main()
