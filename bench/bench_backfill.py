"""Backfill: a large tenant's first sync at real API latency, export-only vs backfill, side by side.

One tenant (customers + invoices) behind a sandbox that adds `--latency-ms` to every API request
and serves export pages of 500, with ServiceTitan's 60 requests/s per tenant. `stsyncd` runs as a
subprocess; each round empties the tables and asks it (over the control socket) for a first sync of
both data types: once with backfills off (`[sync] backfill_min_records = 0`: the export, one page
after the other) and once with them on (list pages of `--page-size`, the daemon's default, `--concurrency` in flight per data
type, then the catch-up export). Then, with backfills on again, 1% of the records are modified and
0.5% created while the backfill runs. Every sync must leave the tables equal to the sandbox's truth
(digests), the tenant's peak must stay <= 60 requests/s, and the incremental sync after the
mutated backfill must fetch only what changed after it (nothing, here).

    .venv/bin/python bench/bench_backfill.py [--records 200000 --latency-ms 1000 --concurrency 16 --runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import threading
import time
from typing import Any

import asyncpg
from common import (
    Daemon,
    prepare_database,
    print_table,
    private_postgres,
    register,
    reset_records,
    sandbox_admin,
    settings_dict,
    start_sandbox,
    tenant_spec,
    verdict,
    work_dir,
    write_result,
)

from stsync_daemon.limits import BACKFILL_CONCURRENCY_DEFAULT, BACKFILL_PAGE_SIZE_DEFAULT
from stsync_daemon.sandbox.truth import truth_digest

TENANT = 7001
RATE_LIMIT = 60
SPEEDUP = 8.0
EXPORT_PAGE = 500
DATA_TYPES = ("customers", "invoices")


async def db_digests(dsn: str) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for data_type in DATA_TYPES:
            rows = await conn.fetch(
                f"SELECT id, payload->>'modifiedOn' AS m, active FROM servicetitan.{data_type} "
                "WHERE tenant_id = $1",
                TENANT,
            )
            out[data_type] = {
                "count": len(rows),
                "digest": truth_digest((r["id"], r["m"], r["active"]) for r in rows),
            }
        return out
    finally:
        await conn.close()


def truth(base_url: str) -> dict[str, dict[str, Any]]:
    return {
        data_type: {
            k: v
            for k, v in sandbox_admin(
                base_url,
                "GET",
                f"truth?tenant_id={TENANT}&environment=production&data_type={data_type}",
            ).items()
            if k in ("count", "digest")
        }
        for data_type in DATA_TYPES
    }


def peak(base_url: str) -> int:
    counters = sandbox_admin(base_url, "GET", "counters")
    return max((p["max"] for p in counters["max_requests_per_second"]), default=0)


async def first_sync(
    daemon: Daemon, dsn: str, base_url: str, mutate: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Empty tables, then one process of the tenant; `mutate` = (modify, create) per data type,
    spread over the sync's first seconds."""
    await reset_records(dsn)
    sandbox_admin(base_url, "POST", "counters/reset", {})
    stop = threading.Event()
    changed = {"modified": 0, "created": 0}

    def mutator() -> None:
        """Change records while the list pages are read: after the two counts and before the
        catch-up export's first request, in steps of a tenth of the changes."""
        assert mutate is not None
        steps = 10
        while not stop.is_set() and changed["modified"] < mutate[0] * len(DATA_TYPES):
            kinds = {
                r["kind"]: r["count"]
                for r in sandbox_admin(base_url, "GET", "counters")["requests"]
                if r["tenant_id"] == TENANT
            }
            lists = kinds.get("customers_list", 0) + kinds.get("invoices_list", 0)
            exports = kinds.get("customers_export", 0) + kinds.get("invoices_export", 0)
            if exports:
                return  # the backfill is over: what changes now is the next sync's
            if lists > len(DATA_TYPES):
                for data_type in DATA_TYPES:
                    sandbox_admin(
                        base_url,
                        "POST",
                        "mutate",
                        {
                            "tenant_id": TENANT,
                            "environment": "production",
                            "data_type": data_type,
                            "modify": mutate[0] // steps,
                            "create": mutate[1] // steps,
                        },
                    )
                    changed["modified"] += mutate[0] // steps
                    changed["created"] += mutate[1] // steps
            stop.wait(0.02)

    thread = threading.Thread(target=mutator) if mutate else None
    clock = time.perf_counter()
    if thread:
        thread.start()
    summary = await daemon.run("/v1/process", {"max_concurrent": 2})
    seconds = time.perf_counter() - clock
    stop.set()
    if thread:
        thread.join()
    if summary["successful_syncs"] != 2:
        raise SystemExit(f"the first sync failed: {summary}")
    return {
        "seconds": seconds,
        "records": summary["total_records_processed"],
        "peak_requests_per_second": peak(base_url),
        "equal_to_truth": await db_digests(dsn) == truth(base_url),
        "changed_during_backfill": changed if mutate else None,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = work_dir("stsync-backfill-")
    spec = tenant_spec(TENANT, args.records, args.records)
    sandbox = start_sandbox(
        [spec],
        work,
        rate_limit_per_second=RATE_LIMIT,
        export_page_size=EXPORT_PAGE,
        faults=[{"latency_ms": args.latency_ms}],
    )
    export_only: list[dict[str, Any]] = []
    backfill: list[dict[str, Any]] = []
    try:
        with private_postgres(work) as cluster:
            dsn = cluster.dsn()
            key = await prepare_database(dsn, work)
            await register(dsn, key, [spec])
            common = {
                "servicetitan": {"requests_per_second": 55},
                "database": {"pool_max_size": 12},
            }
            modes = {
                "export": {"backfill_min_records": 0},
                "backfill": {
                    "backfill_min_records": min(20_000, args.records),
                    "backfill_concurrency": args.concurrency,
                    "backfill_page_size": args.page_size,
                },
            }
            for _ in range(args.runs):
                for mode, sync in modes.items():
                    settings = settings_dict(sandbox.base_url, dsn, key, sync=sync, **common)
                    daemon = await Daemon(work / f"daemon-{mode}", settings).start()
                    try:
                        outcome = await first_sync(daemon, dsn, sandbox.base_url)
                    finally:
                        await daemon.stop()
                    (export_only if mode == "export" else backfill).append(outcome)
            # Changes while the backfill runs, then the next incremental sync.
            settings = settings_dict(sandbox.base_url, dsn, key, sync=modes["backfill"], **common)
            daemon = await Daemon(work / "daemon-mutated", settings).start()
            try:
                changes = (args.records // 100, args.records // 200)
                mutated = await first_sync(daemon, dsn, sandbox.base_url, mutate=changes)
                sandbox_admin(sandbox.base_url, "POST", "counters/reset", {})
                after = await daemon.run("/v1/process", {"max_concurrent": 2})
                mutated["next_incremental_records"] = after["total_records_processed"]
                mutated["next_incremental_equal_to_truth"] = await db_digests(dsn) == truth(
                    sandbox.base_url
                )
            finally:
                await daemon.stop()
    finally:
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    export_s = statistics.median(r["seconds"] for r in export_only)
    backfill_s = statistics.median(r["seconds"] for r in backfill)
    speedup = export_s / backfill_s
    peak_rps = max(r["peak_requests_per_second"] for r in [*export_only, *backfill, mutated])
    equal = all(r["equal_to_truth"] for r in [*export_only, *backfill, mutated])
    return {
        "records_per_data_type": args.records,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "export_only": export_only,
        "backfill": backfill,
        "mutated": mutated,
        "speedup": speedup,
        "peak_requests_per_second": peak_rps,
        "digests_equal": equal,
        "met": speedup >= SPEEDUP
        and peak_rps <= RATE_LIMIT
        and equal
        and mutated["next_incremental_records"] == 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="per data type")
    parser.add_argument("--latency-ms", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=BACKFILL_CONCURRENCY_DEFAULT)
    parser.add_argument(
        "--page-size", type=int, default=BACKFILL_PAGE_SIZE_DEFAULT, help="list page size"
    )
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    r = asyncio.run(bench(args))
    export_s = statistics.median(x["seconds"] for x in r["export_only"])
    backfill_s = statistics.median(x["seconds"] for x in r["backfill"])
    m = r["mutated"]
    print_table(
        f"Backfill: one tenant, {args.records:,} customers + {args.records:,} invoices, "
        f"{args.latency_ms:g} ms per request, export pages of {EXPORT_PAGE}; first sync, "
        f"median of {args.runs}",
        ["measure", "value", "target", "verdict"],
        [
            ["export-only first sync s", f"{export_s:.1f}", "", ""],
            [f"backfill first sync s ({args.concurrency} pages in flight)", f"{backfill_s:.1f}", "", ""],
            ["speed-up", f"{r['speedup']:.1f}x", f">= {SPEEDUP:g}x", verdict(r["speedup"] >= SPEEDUP)],
            ["peak requests/s for the tenant", r["peak_requests_per_second"], f"<= {RATE_LIMIT}", verdict(r["peak_requests_per_second"] <= RATE_LIMIT)],
            ["digests equal the truth (every sync)", r["digests_equal"], "yes", verdict(r["digests_equal"])],
            ["backfill with 1% modified + 0.5% created meanwhile s", f"{m['seconds']:.1f}", "", ""],
            ["  records changed while its pages were read", f"{m['changed_during_backfill']['modified']} modified, {m['changed_during_backfill']['created']} created", "", ""],
            ["  then the next incremental sync fetched", f"{m['next_incremental_records']} records", "0", verdict(m["next_incremental_records"] == 0)],
        ],
    )  # fmt: skip
    print("results:", write_result("backfill", r))


if __name__ == "__main__":
    main()
