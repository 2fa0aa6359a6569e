"""How fast the sandbox serves export pages (500 records each) and list pages (5000) to one aiohttp client.

The sandbox runs as a separate process (`python -m stsync_daemon.sandbox`), as in end-to-end tests, so
client and sandbox each can have a core. The client runs on uvloop, as the daemon does. Two clients:

- read: reads every page body and follows `continueFrom` (found in the envelope's head, records counted
  by a per-record key) — the sandbox's own serving rate, the figure the sandbox issue sets (>= 50,000/s);
- decode: also decodes every page with orjson, as a sync does first — on this machine that client needs
  about as much CPU per record as the sandbox, so it measures itself as much as the sandbox.

Scenarios (customers unless named): cold = the default 64 MiB page cache and a data set larger than it,
so every page is rendered on demand while the client handles the previous one (prefetch); no cache =
page cache off, so rendering and the client take turns; warm = a data set that fits the cache, read
again after a priming pass (the decoding client's own ceiling); invoices (about 2.9 KB each) cold;
list = the list endpoint read as a backfill does (`active=Any&sort=+Id&includeTotal=true`, pageSize
5000: page 1 for the total, then the rest with 1 or 4 requests in flight).

Prints a table and writes bench/results/sandbox.json (median of --runs, with min and max, plus the CPU
time each side spent per record and the load average: on a shared machine the CPU figures say more).

    .venv/bin/python bench/bench_sandbox.py [--customers 100000] [--invoices 50000] [--runs 3]
        [--only export|list]   # a partial run writes bench/results/sandbox-export.json or -list.json
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


LIST_PAGE_SIZE = 5000
HAS_MORE = re.compile(rb'"hasMore":(true|false)')


async def list_once(
    session: aiohttp.ClientSession,
    info: dict[str, Any],
    data_type: str,
    decode: bool,
    in_flight: int,
) -> tuple[int, float]:
    """Read a whole list endpoint as a backfill does (`active=Any&sort=+Id`, pageSize 5000): page 1
    for the total, then the other pages with up to `in_flight` requests at a time."""
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
    url = f"{urls['api_url']}/{module}/v2/tenant/1/{data_type}"
    record_key = RECORD_KEYS[data_type]
    gate = asyncio.Semaphore(in_flight)

    async def page(number: int) -> tuple[int, bool, int]:
        params = {
            "active": "Any",
            "sort": "+Id",
            "page": str(number),
            "pageSize": str(LIST_PAGE_SIZE),
            "includeTotal": "true",
        }
        async with gate, session.get(url, params=params, headers=headers) as response:
            assert response.status == 200, response.status
            body = await response.read()
        if decode:
            decoded = orjson.loads(body)
            return len(decoded["data"]), decoded["hasMore"], decoded["totalCount"]
        head = body[:200]
        more = HAS_MORE.search(head)
        total = re.search(rb'"totalCount":(\d+)', head)
        assert more is not None and total is not None, head
        return body.count(record_key), more.group(1) == b"true", int(total.group(1))

    start = time.perf_counter()
    records, has_more, total = await page(1)
    pages = -(-total // LIST_PAGE_SIZE)
    rest = await asyncio.gather(*(page(n) for n in range(2, pages + 1)))
    records += sum(r[0] for r in rest)
    assert not (rest[-1][1] if rest else has_more)
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
    in_flight: int = 0,
) -> dict[str, Any]:
    """Several full exports (or, with `in_flight` > 0, full listings) against one fresh sandbox."""

    async def once(session: aiohttp.ClientSession, info: dict[str, Any]) -> tuple[int, float]:
        if in_flight:
            return await list_once(session, info, data_type, decode, in_flight)
        return await export_once(session, info, data_type, decode)

    process, info = await start_sandbox(data_type, count, cache_bytes)
    try:
        async with aiohttp.ClientSession() as session:
            if prime:
                await once(session, info)
            rates = []
            server_cpu = cpu_seconds(process.pid)
            client_cpu = time.process_time()
            for _ in range(runs):
                records, seconds = await once(session, info)
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
        "endpoint": f"list, {in_flight} in flight" if in_flight else "export",
        "records": count,
        "page_size": LIST_PAGE_SIZE if in_flight else 500,
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
    parser.add_argument(
        "--only", choices=("export", "list"), help="run only the export or only the list scenarios"
    )
    args = parser.parse_args()
    results = []
    if args.only != "list":
        results += [
            await scenario("cold", "customers", args.customers, 64 * MIB, args.runs, False, False),
            await scenario("cold", "customers", args.customers, 64 * MIB, args.runs, False, True),
            await scenario("no cache", "customers", args.customers, 0, args.runs, False, False),
            await scenario(
                "warm", "customers", args.warm_customers, 256 * MIB, args.runs, True, True
            ),
            await scenario("cold", "invoices", args.invoices, 64 * MIB, args.runs, False, False),
            await scenario("cold", "invoices", args.invoices, 64 * MIB, args.runs, False, True),
        ]
    if args.only != "export":
        # The list endpoints as a backfill reads them: rendered per request, no page cache.
        for data_type, count in (("customers", args.customers), ("invoices", args.invoices)):
            for decode, in_flight in ((False, 1), (False, 4), (True, 4)):
                results.append(
                    await scenario(
                        "list", data_type, count, 64 * MIB, args.runs, False, decode, in_flight
                    )
                )
    print(
        f"{'data':<10} {'endpoint':<19} {'scenario':<9} {'client':<7} {'records':>9} {'median rec/s':>13}"
        f" {'min-max rec/s':>17} {'sandbox CPU us/rec':>19} {'client CPU us/rec':>18} {'load':>5}"
    )
    for r in results:
        span = f"{r['records_per_second_min']:,}-{r['records_per_second_max']:,}"
        print(
            f"{r['data_type']:<10} {r['endpoint']:<19} {r['scenario']:<9} {r['client']:<7}"
            f" {r['records']:>9,}"
            f" {r['records_per_second_median']:>13,} {span:>17}"
            f" {r['sandbox_cpu_us_per_record']:>19} {r['client_cpu_us_per_record']:>18}"
            f" {r['load_average_1m']:>5}"
        )
    # A partial run keeps its own file, so that bench/run's comparison reads a complete one.
    results_file = RESULTS.with_stem(f"sandbox-{args.only}") if args.only else RESULTS
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(
        json.dumps(
            {
                "benchmark": "sandbox export pages of 500 records, list pages of 5000, to one"
                " aiohttp client (uvloop)",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {results_file.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    uvloop.run(main())
