"""Concurrency: 30 tenants behind a slow API, synced by the daemon with max_concurrent 1, 3 and 10.

The sandbox adds 200 ms to every API request, as a distant ServiceTitan would; `stsyncd` runs as a
subprocess and each round asks it (over the control socket) for a full process of every tenant,
once per `max_concurrent`, from empty tables. Speed-up is the median time at 1 over the median time
at N; target >= 0.85 x N. Every tenant must stay at or under 60 requests/s, read from the sandbox's
per-second peak counters (the daemon keeps ServiceTitan's default limit, 55/s).

    .venv/bin/python bench/bench_concurrency.py [--tenants 30 --customers 100 --invoices 100 --page-size 50 --runs 3]
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
    register,
    reset_records,
    sandbox_admin,
    settings_dict,
    start_sandbox,
    summarize,
    tenant_spec,
    verdict,
    work_dir,
    write_result,
)

LATENCY_MS = 200.0
LEVELS = (1, 3, 10)
SPEEDUP = 0.85
RATE_LIMIT = 60


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = work_dir("stsync-conc-")
    specs = [tenant_spec(1000 + i, args.customers, args.invoices) for i in range(args.tenants)]
    sandbox = start_sandbox(
        specs,
        work,
        rate_limit_per_second=RATE_LIMIT,
        export_page_size=args.page_size,
        faults=[{"latency_ms": LATENCY_MS}],
    )
    seconds: dict[int, list[float]] = {n: [] for n in LEVELS}
    peaks: dict[int, list[int]] = {n: [] for n in LEVELS}
    try:
        with private_postgres(work) as cluster:
            dsn = cluster.dsn()
            key = await prepare_database(dsn, work)
            await register(dsn, key, specs)
            settings = settings_dict(
                sandbox.base_url,
                dsn,
                key,
                servicetitan={"requests_per_second": 55},
                database={"pool_max_size": 30},
            )
            daemon = await Daemon(work / "daemon", settings).start()
            try:
                for _ in range(args.runs):
                    for level in LEVELS:
                        await reset_records(dsn)
                        sandbox_admin(sandbox.base_url, "POST", "counters/reset", {})
                        summary = await daemon.run("/v1/process", {"max_concurrent": level})
                        expected = 2 * args.tenants
                        if summary["successful_syncs"] != expected:
                            raise SystemExit(
                                f"max_concurrent {level}: {summary['successful_syncs']} of "
                                f"{expected} syncs succeeded: {summary}"
                            )
                        seconds[level].append(summary["execution_time_seconds"])
                        counters = sandbox_admin(sandbox.base_url, "GET", "counters")
                        peaks[level].append(
                            max(p["max"] for p in counters["max_requests_per_second"])
                        )
            finally:
                await daemon.stop()
    finally:
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(seconds[1])
    levels = []
    for level in LEVELS:
        speedup = base / statistics.median(seconds[level])
        levels.append(
            {
                "max_concurrent": level,
                "seconds": summarize(seconds[level]),
                "speedup": speedup,
                "target_speedup": SPEEDUP * level,
                "speedup_met": speedup >= SPEEDUP * level,
                "max_tenant_requests_per_second": max(peaks[level]),
                "rate_met": max(peaks[level]) <= RATE_LIMIT,
            }
        )
    return {
        "tenants": args.tenants,
        "sizes": {"customers": args.customers, "invoices": args.invoices},
        "page_size": args.page_size,
        "latency_ms": LATENCY_MS,
        "levels": levels,
        "met": all(lv["speedup_met"] and lv["rate_met"] for lv in levels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=30)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--invoices", type=int, default=100)
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    r = asyncio.run(bench(args))
    print_table(
        f"Concurrency: {args.tenants} tenants x (customers + invoices), {LATENCY_MS} ms per page "
        f"(seconds, median (min-max) of {args.runs}); target speed-up >= {SPEEDUP} x N, "
        f"<= {RATE_LIMIT} requests/s per tenant",
        ["max_concurrent", "seconds", "speed-up", "target", "max req/s per tenant", "verdict"],
        [
            [
                lv["max_concurrent"],
                fmt(lv["seconds"], 2),
                f"{lv['speedup']:.2f}x",
                f">= {lv['target_speedup']:.2f}x",
                lv["max_tenant_requests_per_second"],
                verdict(lv["speedup_met"] and lv["rate_met"]),
            ]
            for lv in r["levels"]
        ],
    )
    print("results:", write_result("concurrency", r))


if __name__ == "__main__":
    main()
