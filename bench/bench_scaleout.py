"""Scale-out: one run over many tenants with 1 and with 3 stsyncd instances on one PostgreSQL.

The sandbox adds latency to every page so the API, not the CPU, bounds the run (as in production,
where each tenant's export is a chain of slow requests). Runs alternate 1 and 3 instances; each
configuration gets a warm-up run first (tokens), then timed full runs; we report medians and the
speed-up of the medians (target at least 2.5x).

    .venv/bin/python bench/bench_scaleout.py --tenants 300 --records 50 --page-size 50 --latency-ms 500 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from common import Daemon, print_table, private_postgres, start_sandbox, summarize, write_result

from stsync_daemon.store.crypto import generate_key
from stsync_daemon.store.migrate import migrate

APP_KEY = "ak1.sandbox"


async def timed_run(daemon: Daemon) -> tuple[float, dict[str, Any]]:
    clock = time.perf_counter()
    summary = await daemon.run("/v1/process", {"full": True})
    seconds = time.perf_counter() - clock
    if summary["failed_syncs"]:
        raise SystemExit(f"a benchmark run had failures: {summary['failed_syncs']}")
    return seconds, summary


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="stsync-scaleout-"))
    os.chmod(work, 0o755)
    tenants = [
        {
            "tenant_id": 5000 + i,
            "environment": "production",
            "client_id": f"cid-{i}",
            "client_secret": f"secret-{i}",
            "customers": args.records,
            "invoices": args.records,
            "seed": i,
        }
        for i in range(args.tenants)
    ]
    sandbox = start_sandbox(
        tenants,
        work,
        export_page_size=args.page_size,
        faults=[{"latency_ms": args.latency_ms}],
    )
    base = sandbox.base_url
    result: dict[str, Any] = {
        "tenants": args.tenants,
        "records_per_data_type": args.records,
        "latency_ms": args.latency_ms,
        "max_concurrent_per_instance": args.max_concurrent,
    }
    daemons: list[Daemon] = []
    try:
        with private_postgres(work) as cluster:
            dsn = cluster.dsn()
            conn = await asyncpg.connect(dsn)
            await migrate(conn)
            await conn.close()
            key = work / "secrets.key"
            key.write_text(generate_key())
            key.chmod(0o600)
            config = {
                "database": {"dsn": dsn},
                "secrets": {"key_file": str(key)},
                "servicetitan": {
                    "app_key": APP_KEY,
                    "environments": {
                        env: {"auth_url": f"{base}/{env}/auth", "api_url": f"{base}/{env}/api"}
                        for env in ("production", "integration")
                    },
                },
                "sync": {"max_concurrent": args.max_concurrent, "shutdown_grace_seconds": 1},
            }
            daemons = [
                Daemon(work / f"node-{n}", {**config, "cluster": {"instance": f"node-{n}"}})
                for n in range(3)
            ]
            await daemons[0].start()
            for t in tenants:
                status, body = await daemons[0].request(
                    "POST",
                    "/v1/credentials",
                    {
                        "company_id": f"co{t['tenant_id']}",
                        "company_name": f"Company {t['tenant_id']}",
                        "environment": "production",
                        "tenant_id": t["tenant_id"],
                        "client_id": t["client_id"],
                        "client_secret": t["client_secret"],
                    },
                )
                if status != 201:
                    raise SystemExit(f"could not register tenant {t['tenant_id']}: {body}")
            times: dict[int, list[float]] = {1: [], 3: []}
            spread: dict[str, int] = {}
            for round_ in range(args.runs + 1):
                for instances in (1, 3):
                    for d in daemons[1:instances]:
                        await d.start()
                    seconds, summary = await timed_run(daemons[0])
                    if round_ > 0:  # round 0 warms tokens and connections up
                        times[instances].append(seconds)
                    if instances == 3:
                        for s in summary["syncs"]:
                            spread[s["instance"]] = spread.get(s["instance"], 0) + 1
                    for d in daemons[1:instances]:
                        await d.stop()
            one, three = statistics.median(times[1]), statistics.median(times[3])
            syncs = args.tenants * 2
            result.update(
                {
                    "seconds_1_instance": summarize(times[1]),
                    "seconds_3_instances": summarize(times[3]),
                    "speedup": one / three,
                    "syncs_per_run": syncs,
                    "syncs_per_second_1_instance": syncs / one,
                    "syncs_by_instance_with_3": spread,
                }
            )
    finally:
        for d in daemons:
            await d.stop()
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=300)
    parser.add_argument(
        "--records", type=int, default=200, help="customers and invoices per tenant"
    )
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--max-concurrent", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    r = asyncio.run(bench(args))
    s1, s3 = r["seconds_1_instance"], r["seconds_3_instances"]
    print_table(
        f"Scale-out: one full run of {r['tenants']} tenants ({r['syncs_per_run']} syncs), "
        f"{r['latency_ms']:g} ms per page, max_concurrent {r['max_concurrent_per_instance']} per instance",
        ["instances", "seconds (median)", "min-max", "speed-up"],
        [
            ["1", f"{s1['median']:.1f}", f"{s1['min']:.1f}-{s1['max']:.1f}", "1.0x"],
            [
                "3",
                f"{s3['median']:.1f}",
                f"{s3['min']:.1f}-{s3['max']:.1f}",
                f"{r['speedup']:.2f}x (target >= 2.5x)",
            ],
        ],
    )
    print("syncs by instance with 3:", r["syncs_by_instance_with_3"])
    print("results:", write_result("scaleout", r))


if __name__ == "__main__":
    main()
