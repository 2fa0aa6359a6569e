"""Incremental: after 1% of the records change in the sandbox, an incremental sync vs the full one.

Each run starts from empty tables: a full sync of customers and invoices, then the sandbox's admin
API modifies 1% of each data set, then an incremental sync resumes from the committed cursors. We
report both syncs' time and API requests (from the sandbox's counters) and their ratios, per run;
target: the incremental sync takes at most 3% of the full sync's time.

    .venv/bin/python bench/bench_incremental.py [--customers 200000 --invoices 200000 --runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
from typing import Any

import orjson
from common import (
    fmt,
    prepare_database,
    print_table,
    private_postgres,
    register,
    reset_records,
    run_sync_child,
    sandbox_admin,
    sandbox_requests,
    settings_dict,
    start_sandbox,
    summarize,
    tenant_spec,
    verdict,
    work_dir,
    write_result,
)

TENANT = 1
TARGET = 0.03
CHANGED = 0.01


def seconds_and_records(out: dict[str, Any]) -> tuple[float, int]:
    kinds = ("customers", "invoices")
    return sum(out[k]["seconds"] for k in kinds), sum(out[k]["records"] for k in kinds)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = work_dir("stsync-incr-")
    spec = tenant_spec(TENANT, args.customers, args.invoices)
    sandbox = start_sandbox([spec], work, rate_limit_per_second=100_000, export_page_size=500)
    full_s, incr_s, full_req, incr_req, incr_records = [], [], [], [], []
    try:
        with private_postgres(work) as cluster:
            dsn = cluster.dsn()
            key = await prepare_database(dsn, work)
            (credential,) = await register(dsn, key, [spec])
            settings_path = work / "settings.json"
            settings_path.write_bytes(orjson.dumps(settings_dict(sandbox.base_url, dsn, key)))
            for _ in range(args.runs):
                await reset_records(dsn)
                sandbox_admin(sandbox.base_url, "POST", "counters/reset", {})
                seconds, _ = seconds_and_records(run_sync_child(settings_path, credential))
                full_s.append(seconds)
                full_req.append(
                    sandbox_requests(sandbox_admin(sandbox.base_url, "GET", "counters"))
                )
                for data_type, count in (
                    ("customers", args.customers),
                    ("invoices", args.invoices),
                ):
                    sandbox_admin(
                        sandbox.base_url,
                        "POST",
                        "mutate",
                        {
                            "tenant_id": TENANT,
                            "environment": "production",
                            "data_type": data_type,
                            "modify": max(1, int(count * CHANGED)),
                        },
                    )
                sandbox_admin(sandbox.base_url, "POST", "counters/reset", {})
                seconds, records = seconds_and_records(
                    run_sync_child(settings_path, credential, mode="incremental")
                )
                incr_s.append(seconds)
                incr_records.append(records)
                incr_req.append(
                    sandbox_requests(sandbox_admin(sandbox.base_url, "GET", "counters"))
                )
    finally:
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    time_ratios = [i / f for i, f in zip(incr_s, full_s, strict=True)]
    request_ratios = [i / f for i, f in zip(incr_req, full_req, strict=True)]
    return {
        "sizes": {"customers": args.customers, "invoices": args.invoices},
        "changed_share": CHANGED,
        "full_seconds": summarize(full_s),
        "incremental_seconds": summarize(incr_s),
        "full_requests": summarize([float(n) for n in full_req]),
        "incremental_requests": summarize([float(n) for n in incr_req]),
        "incremental_records": summarize([float(n) for n in incr_records]),
        "time_ratio": summarize(time_ratios),
        "request_ratio": summarize(request_ratios),
        "target_time_ratio": TARGET,
        "met": statistics.median(time_ratios) <= TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--invoices", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    r = asyncio.run(bench(args))
    pct = {
        k: {m: v * 100 for m, v in r[k].items() if m != "runs"}
        for k in ("time_ratio", "request_ratio")
    }
    print_table(
        f"Incremental after {CHANGED:.0%} changed, {args.customers:,} customers + "
        f"{args.invoices:,} invoices (median (min-max) of {args.runs}); target time <= {TARGET:.0%}",
        ["sync", "seconds", "API requests", "records fetched"],
        [
            [
                "full",
                fmt(r["full_seconds"], 2),
                fmt(r["full_requests"]),
                f"{args.customers + args.invoices:,}",
            ],
            [
                "incremental",
                fmt(r["incremental_seconds"], 2),
                fmt(r["incremental_requests"]),
                fmt(r["incremental_records"]),
            ],
            ["ratio %", fmt(pct["time_ratio"], 2), fmt(pct["request_ratio"], 2), verdict(r["met"])],
        ],
    )
    print("results:", write_result("incremental", r))


if __name__ == "__main__":
    main()
