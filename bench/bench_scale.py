"""Scale: the daemon idle with 10,000 credentials and 1,000,000 sync log rows, and its answers.

Credentials are inserted with COPY (client secrets encrypted with the real `SecretCipher`), the
sync log with `generate_series` (a month of history, a few percent failures). Then `stsyncd` runs
as a subprocess: its idle RSS and CPU (utime+stime from /proc over --idle seconds), and the latency
of `process --dry-run` over every credential and of `status --failed-only --last-24h`, 20 calls
each over the control socket (p50/p95). Targets: idle RSS <= 150 MB, idle CPU <= 1% of a core,
each answer <= 1 s.

    .venv/bin/python bench/bench_scale.py [--credentials 10000 --sync-log 1000000 --idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
import uuid
from typing import Any

import asyncpg
from common import (
    Daemon,
    prepare_database,
    print_table,
    private_postgres,
    proc_cpu_seconds,
    proc_status_kb,
    settings_dict,
    verdict,
    work_dir,
    write_result,
)
from pydantic import SecretStr

from stsync_daemon.store.crypto import SecretCipher
from stsync_daemon.store.syncs import _SQL as SYNCS_SQL

RSS_MB = 150.0
CPU_SHARE = 0.01
ANSWER_S = 1.0
CALLS = 20

_FILL_SYNC_LOG = """
INSERT INTO stsync.sync_log (id, credential_id, data_type, trigger, mode, status, started_at,
    completed_at, records_processed, records_successful, records_failed, pages, error_category,
    error_message, attempt)
SELECT gen_random_uuid(), c.ids[1 + (g % array_length(c.ids, 1))],
       CASE WHEN g % 2 = 0 THEN 'customers' ELSE 'invoices' END,
       'scheduled', 'incremental',
       CASE WHEN g % 50 = 0 THEN 'failed' WHEN g % 97 = 0 THEN 'timed_out' ELSE 'completed' END,
       now() - (g * interval '30 days' / $1),
       now() - (g * interval '30 days' / $1) + interval '12 seconds',
       g % 500, g % 500, 0, 1 + g % 3,
       CASE WHEN g % 50 = 0 THEN 'api' END,
       CASE WHEN g % 50 = 0 THEN 'ServiceTitan answered 500 three times' END,
       1
FROM generate_series(1, $1) AS g,
     (SELECT array_agg(id ORDER BY id) AS ids FROM stsync.credentials) AS c
"""

_FILL_CURSORS = """
INSERT INTO stsync.cursors (credential_id, data_type, continue_from, max_modified_on,
                            full_completed_at)
SELECT c.id, d.t, 'token-' || c.tenant_id, now() - interval '1 hour', now() - interval '20 days'
FROM stsync.credentials c CROSS JOIN (VALUES ('customers'), ('invoices')) AS d (t)
"""


async def fill(dsn: str, key: Any, credentials: int, sync_log: int) -> dict[str, float]:
    cipher = SecretCipher.from_file(key)
    secret = cipher.encrypt(SecretStr("cs.secret.shared"))
    clock = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "companies",
            schema_name="stsync",
            columns=["id", "name"],
            records=[(f"co{i}", f"Company {i:05d}") for i in range(credentials)],
        )
        await conn.copy_records_to_table(
            "credentials",
            schema_name="stsync",
            columns=["id", "company_id", "environment", "tenant_id", "client_id",
                     "client_secret_encrypted"],
            records=[
                (uuid.uuid4(), f"co{i}", "production", 100_000 + i, f"cid.{i}", secret)
                for i in range(credentials)
            ],
        )  # fmt: skip
        inserted = time.perf_counter() - clock
        await conn.execute(_FILL_SYNC_LOG, sync_log)
        await conn.execute(_FILL_CURSORS)
        await conn.execute("VACUUM ANALYZE")
        total = time.perf_counter() - clock
        # The all-time summary as it was computed before the totals: a scan of the whole log.
        scan_clock = time.perf_counter()
        await conn.fetch(SYNCS_SQL["summarize_syncs"], None, False, False, None, None, None, None)
        scan = time.perf_counter() - scan_clock
    finally:
        await conn.close()
    return {"credentials_seconds": inserted, "total_seconds": total, "scan_summary_seconds": scan}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[max(0, round(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
        "calls": len(ordered),
    }


async def timed(daemon: Daemon, method: str, path: str, body: Any, check: Any) -> list[float]:
    out = []
    for _ in range(CALLS):
        clock = time.perf_counter()
        status, doc = await daemon.request(method, path, body)
        out.append(time.perf_counter() - clock)
        if status != 200 or not check(doc):
            raise SystemExit(f"{method} {path} answered {status}: {str(doc)[:500]}")
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = work_dir("stsync-scale-")
    try:
        with private_postgres(work) as cluster:
            dsn = cluster.dsn()
            key = await prepare_database(dsn, work)
            filled = await fill(dsn, key, args.credentials, args.sync_log)
            # Nothing listens there: idle and dry runs never call ServiceTitan.
            settings = settings_dict("http://127.0.0.1:9", dsn, key)
            daemon = await Daemon(work / "daemon", settings).start()
            try:
                await asyncio.sleep(args.settle)
                cpu0, clock0 = proc_cpu_seconds(daemon.pid), time.monotonic()
                await asyncio.sleep(args.idle)
                cpu = (proc_cpu_seconds(daemon.pid) - cpu0) / (time.monotonic() - clock0)
                idle_rss = proc_status_kb(daemon.pid, "VmRSS") / 1024
                dry = await timed(
                    daemon,
                    "POST",
                    "/v1/process",
                    {"dry_run": True},
                    lambda d: d.get("total_credentials") == args.credentials,
                )
                status = await timed(
                    daemon,
                    "GET",
                    "/v1/status?failed_only=true&last_24h=true",
                    None,
                    lambda d: "summary" in d,
                )
                status_all = await timed(
                    daemon, "GET", "/v1/status", None, lambda d: "summary" in d
                )
                peak_rss = proc_status_kb(daemon.pid, "VmHWM") / 1024
            finally:
                await daemon.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dry_p, status_p, all_p = percentiles(dry), percentiles(status), percentiles(status_all)
    return {
        "credentials": args.credentials,
        "sync_log_rows": args.sync_log,
        "fill": filled,
        "idle_seconds": args.idle,
        "idle_rss_mb": idle_rss,
        "peak_rss_mb_after_calls": peak_rss,
        "idle_cpu_share": cpu,
        "dry_run_seconds": dry_p,
        "status_seconds": status_p,
        "status_all_seconds": all_p,
        "targets": {"rss_mb": RSS_MB, "cpu_share": CPU_SHARE, "answer_seconds": ANSWER_S},
        "met": idle_rss <= RSS_MB
        and cpu <= CPU_SHARE
        and dry_p["p95"] <= ANSWER_S
        and status_p["p95"] <= ANSWER_S
        and all_p["p95"] <= ANSWER_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--credentials", type=int, default=10_000)
    parser.add_argument("--sync-log", type=int, default=1_000_000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle measured")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after start-up")
    args = parser.parse_args()
    r = asyncio.run(bench(args))
    d, s, a = r["dry_run_seconds"], r["status_seconds"], r["status_all_seconds"]
    print_table(
        f"Scale: {args.credentials:,} credentials, {args.sync_log:,} sync log rows",
        ["measure", "value", "target", "verdict"],
        [
            ["idle RSS MB", f"{r['idle_rss_mb']:.1f}", f"<= {RSS_MB:.0f}", verdict(r["idle_rss_mb"] <= RSS_MB)],
            [f"idle CPU over {args.idle:g} s", f"{r['idle_cpu_share'] * 100:.2f}% of a core", "<= 1%", verdict(r["idle_cpu_share"] <= CPU_SHARE)],
            ["process --dry-run p50 / p95 s", f"{d['p50']:.3f} / {d['p95']:.3f}", "<= 1 s", verdict(d["p95"] <= ANSWER_S)],
            ["status --failed-only --last-24h p50 / p95 s", f"{s['p50']:.3f} / {s['p95']:.3f}", "<= 1 s", verdict(s["p95"] <= ANSWER_S)],
            ["status (no filter: all time) p50 / p95 s", f"{a['p50']:.3f} / {a['p95']:.3f}", "<= 1 s", verdict(a["p95"] <= ANSWER_S)],
            ["  the same summary scanning the log (before the totals) s", f"{r['fill']['scan_summary_seconds']:.3f}", "", ""],
            ["peak RSS MB after the calls", f"{r['peak_rss_mb_after_calls']:.1f}", "", ""],
        ],
    )  # fmt: skip
    print("results:", write_result("scale", r))


if __name__ == "__main__":
    main()
