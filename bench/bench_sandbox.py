"""How fast the sandbox serves export pages (500 records each) to one aiohttp client.

The sandbox runs as a separate process (`python -m stsync_daemon.sandbox`), as in end-to-end tests, so
client and sandbox each can have a core. The client runs on uvloop, as the daemon does. Two clients:

- read: reads every page body and follows `continueFrom` (found in the envelope's head, records counted
  by a per-record key) — the sandbox's own serving rate, the figure the sandbox issue sets (>= 50,000/s);
- decode: also decodes every page with orjson, as a sync does first — on this machine that client needs
  about as much CPU per record as the sandbox, so it measures itself as much as the sandbox.

Scenarios (customers unless named): cold = the default 64 MiB page cache and a data set larger than it,
so every page is rendered on demand while the client handles the previous one (prefetch); no cache =
page cache off, so rendering and the client take turns; warm = a data set that fits the cache, read
again after a priming pass (the decoding client's own ceiling); invoices (about 2.9 KB each) cold.

Prints a table and writes bench/results/sandbox.json (median of --runs, with min and max, plus the CPU
time each side spent per record and the load average: on a shared machine the CPU figures say more).

    .venv/bin/python bench/bench_sandbox.py [--customers 100000] [--invoices 50000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "sandbox.json"
APP_KEY = "bench-app"
MIB = 1024 * 1024


async def start_sandbox(
    data_type: str, count: int, page_cache_bytes: int
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """A sandbox process with one production tenant; returns it and its info."""
    config = {
        "app_keys": [APP_KEY],
        "rate_limit_per_second": 1_000_000,
        "page_cache_bytes": page_cache_bytes,
        "tenants": [
            {
                "tenant_id": 1,
                "environment": "production",
                "client_id": "bench",
                "client_secret": "bench-secret",
                "customers": count if data_type == "customers" else 1000,
                "invoices": count if data_type == "invoices" else 0,
                "seed": 1,
            }
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stsync_daemon.sandbox",
        "--port",
        "0",
        "--json",
        "--log-level",
        "WARNING",
        "--tenants",
        handle.name,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    info = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
    Path(handle.name).unlink()
    return process, info


# A key every record of the data type has exactly once (nested objects of invoices also have "id").
RECORD_KEYS = {"customers": b'"mergedToId":', "invoices": b'"syncStatus":'}
CONTINUE_FROM = re.compile(rb'"continueFrom":"([^"]*)"')


async def export_once(
    session: aiohttp.ClientSession, info: dict[str, Any], data_type: str, decode: bool
) -> tuple[int, float]:
    """Read a whole export from the beginning; returns (records, seconds)."""
    urls = info["environments"]["production"]
    form = {
        "grant_type": "client_credentials",
        "client_id": "bench",
        "client_secret": "bench-secret",
    }
    async with session.post(urls["auth_url"] + "/connect/token", data=form) as response:
        token = (await response.json())["access_token"]
    headers = {"Authorization": token, "ST-App-Key": APP_KEY}
    module = "crm" if data_type == "customers" else "accounting"
    url = f"{urls['api_url']}/{module}/v2/tenant/1/export/{data_type}"
    record_key = RECORD_KEYS[data_type]
    records = 0
    params: dict[str, str] = {}
    start = time.perf_counter()
    while True:
        async with session.get(url, params=params, headers=headers) as response:
            assert response.status == 200, response.status
            body = await response.read()
        if decode:
            page = orjson.loads(body)
            records += len(page["data"])
            has_more = page["hasMore"]
            params = {"from": page["continueFrom"]}
        else:
            records += body.count(record_key)
            has_more = body.startswith(b'{"hasMore":true')
            found = CONTINUE_FROM.search(body, 0, 400)
            assert found is not None, body[:400]
            params = {"from": found.group(1).decode()}
        if not has_more:
            return records, time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scenario(
    name: str,
    data_type: str,
    count: int,
    cache_bytes: int,
    runs: int,
    prime: bool,
    decode: bool,
) -> dict[str, Any]:
    """Several full exports against one fresh sandbox process."""
    process, info = await start_sandbox(data_type, count, cache_bytes)
    try:
        async with aiohttp.ClientSession() as session:
            if prime:
                await export_once(session, info, data_type, decode)
            rates = []
            server_cpu = cpu_seconds(process.pid)
            client_cpu = time.process_time()
            for _ in range(runs):
                records, seconds = await export_once(session, info, data_type, decode)
                assert records == count, (records, count)
                rates.append(records / seconds)
            server_cpu = cpu_seconds(process.pid) - server_cpu
            client_cpu = time.process_time() - client_cpu
    finally:
        process.terminate()
        await process.wait()
    return {
        "scenario": name,
        "data_type": data_type,
        "client": "decode" if decode else "read",
        "records": count,
        "page_size": 500,
        "page_cache_bytes": cache_bytes,
        "runs": runs,
        "records_per_second_median": round(statistics.median(rates)),
        "records_per_second_min": round(min(rates)),
        "records_per_second_max": round(max(rates)),
        "sandbox_cpu_us_per_record": round(server_cpu / (count * runs) * 1e6, 2),
        "client_cpu_us_per_record": round(client_cpu / (count * runs) * 1e6, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


async def main() -> None:
    """Run the scenarios, print a table, write the JSON results."""
    parser = argparse.ArgumentParser(description="Sandbox export throughput.")
    parser.add_argument("--customers", type=int, default=100_000, help="cold scenario size")
    parser.add_argument("--warm-customers", type=int, default=20_000, help="warm scenario size")
    parser.add_argument("--invoices", type=int, default=50_000, help="invoices scenario size")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median reported)")
    args = parser.parse_args()
    results = [
        await scenario("cold", "customers", args.customers, 64 * MIB, args.runs, False, False),
        await scenario("cold", "customers", args.customers, 64 * MIB, args.runs, False, True),
        await scenario("no cache", "customers", args.customers, 0, args.runs, False, False),
        await scenario("warm", "customers", args.warm_customers, 256 * MIB, args.runs, True, True),
        await scenario("cold", "invoices", args.invoices, 64 * MIB, args.runs, False, False),
        await scenario("cold", "invoices", args.invoices, 64 * MIB, args.runs, False, True),
    ]
    print(
        f"{'data':<10} {'scenario':<9} {'client':<7} {'records':>9} {'median rec/s':>13}"
        f" {'min-max rec/s':>17} {'sandbox CPU us/rec':>19} {'client CPU us/rec':>18} {'load':>5}"
    )
    for r in results:
        span = f"{r['records_per_second_min']:,}-{r['records_per_second_max']:,}"
        print(
            f"{r['data_type']:<10} {r['scenario']:<9} {r['client']:<7} {r['records']:>9,}"
            f" {r['records_per_second_median']:>13,} {span:>17}"
            f" {r['sandbox_cpu_us_per_record']:>19} {r['client_cpu_us_per_record']:>18}"
            f" {r['load_average_1m']:>5}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "sandbox export pages of 500 records to one aiohttp client (uvloop)",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    uvloop.run(main())
