"""Peer: the same tenant's customers and invoices loaded by stsync and by dlt, side by side.

dlt (its REST API source on the sandbox's export endpoints, PostgreSQL destination, merge on id) is
what a user would pick instead of stsync. Both load into the same private PostgreSQL from the same
sandbox process in the same run, alternating, each run starting from empty tables; stsync syncs the
two data types side by side as the daemon does, dlt runs its pipeline with its defaults. Target: stsync
at least 6x dlt's records/s. Needs dlt: `.venv/bin/pip install -e '.[bench]'`.

    .venv/bin/python bench/bench_peer.py [--customers 100000 --invoices 100000 --runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from common import (
    APP_KEY,
    ROOT,
    fmt,
    prepare_database,
    print_table,
    private_postgres,
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

TENANT = 1
TARGET = 6.0  # issue 15 (4.0 before)


def token(base_url: str, spec: dict[str, Any]) -> str:
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": spec["client_id"],
            "client_secret": spec["client_secret"],
        }
    ).encode()
    with urllib.request.urlopen(f"{base_url}/production/auth/connect/token", form) as resp:
        return str(orjson.loads(resp.read())["access_token"])


def child(argv: list[str]) -> dict[str, Any]:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{Path(argv[1]).name} failed: {out.stderr.strip()[-3000:]}")
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


async def drop_dlt(dsn: str, pipelines: Path) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP SCHEMA IF EXISTS dlt_bench CASCADE; DROP SCHEMA IF EXISTS dlt_bench_staging CASCADE"
        )
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    shutil.rmtree(pipelines, ignore_errors=True)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import dlt  # noqa: F401
    except ImportError:
        raise SystemExit("dlt is not installed: .venv/bin/pip install -e '.[bench]'") from None
    work = work_dir("stsync-peer-")
    spec = tenant_spec(TENANT, args.customers, args.invoices)
    sandbox = start_sandbox([spec], work, rate_limit_per_second=100_000, export_page_size=500)
    total = args.customers + args.invoices
    stsync, peer, peer_rss, stsync_rss = [], [], [], []
    try:
        with private_postgres(work) as cluster:
            dsn = cluster.dsn()
            key = await prepare_database(dsn, work)
            (credential,) = await register(dsn, key, [spec])
            settings_path = work / "settings.json"
            settings_path.write_bytes(
                orjson.dumps(
                    settings_dict(
                        sandbox.base_url, dsn, key, sync={"commit_batch_records": args.batch}
                    )
                )
            )
            pipelines = work / "dlt"
            for _ in range(args.runs):
                await reset_records(dsn)
                out = child(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "sync_child.py"),
                        "--settings",
                        str(settings_path),
                        "--credential",
                        credential,
                        "--data-types",
                        "customers,invoices",
                        "--concurrent",
                    ]
                )
                records = out["customers"]["records"] + out["invoices"]["records"]
                if records != total:
                    raise SystemExit(f"stsync stored {records} of {total} records")
                stsync.append(total / out["seconds"])
                stsync_rss.append(out["peak_rss_mb"])
                await drop_dlt(dsn, pipelines)
                out = child(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "dlt_child.py"),
                        "--base-url",
                        sandbox.base_url,
                        "--token",
                        token(sandbox.base_url, spec),
                        "--app-key",
                        APP_KEY,
                        "--tenant",
                        str(TENANT),
                        "--dsn",
                        dsn,
                        "--pipelines-dir",
                        str(pipelines),
                    ]
                )
                if sum(out["counts"].values()) != total:
                    raise SystemExit(f"dlt stored {out['counts']} of {total} records")
                peer.append(total / out["seconds"])
                peer_rss.append(out["peak_rss_mb"])
            await drop_dlt(dsn, pipelines)
    finally:
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    ratio = statistics.median(stsync) / statistics.median(peer)
    return {
        "sizes": {"customers": args.customers, "invoices": args.invoices},
        "stsync_records_per_second": summarize(stsync),
        "dlt_records_per_second": summarize(peer),
        "stsync_peak_rss_mb": summarize(stsync_rss),
        "dlt_peak_rss_mb": summarize(peer_rss),
        "ratio": ratio,
        "target_ratio": TARGET,
        "met": ratio >= TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--invoices", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    r = asyncio.run(bench(args))
    print_table(
        f"Peer: {args.customers:,} customers + {args.invoices:,} invoices "
        f"(records/s, median (min-max) of {args.runs}); target stsync >= {TARGET:g}x dlt",
        ["loader", "records/s", "peak RSS MB", "ratio", "target"],
        [
            ["stsync", fmt(r["stsync_records_per_second"]), fmt(r["stsync_peak_rss_mb"]), "", ""],
            [
                "dlt (rest_api, merge)",
                fmt(r["dlt_records_per_second"]),
                fmt(r["dlt_peak_rss_mb"]),
                f"{r['ratio']:.1f}x",
                verdict(r["met"]),
            ],
        ],
    )
    print("results:", write_result("peer", r))


if __name__ == "__main__":
    main()
