"""One full sync in its own process, so its peak RSS is its own: prints a JSON line of results."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stsync_daemon.config import Settings
from stsync_daemon.enums import DataType, SyncMode
from stsync_daemon.servicetitan import ServiceTitanClient
from stsync_daemon.store.credentials import CredentialStore
from stsync_daemon.store.crypto import SecretCipher
from stsync_daemon.store.db import create_pool
from stsync_daemon.sync.engine import SyncEngine, SyncRequest

_PEAK: list = [0, None]


async def _watch_peak() -> None:
    """Keep the snapshot taken when traced memory was highest (what is alive at the peak)."""
    while True:
        await asyncio.sleep(0.2)
        current = tracemalloc.get_traced_memory()[0]
        if current > _PEAK[0]:
            _PEAK[0], _PEAK[1] = current, tracemalloc.take_snapshot()


def peak_rss_mb() -> float:
    """VmHWM: unlike ru_maxrss, it is not inherited from the parent across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(args: argparse.Namespace) -> dict[str, object]:
    if os.environ.get("STSYNC_BENCH_TRACEMALLOC"):
        tracemalloc.start(12)
    settings = Settings(**orjson.loads(Path(args.settings).read_bytes()))
    pool = await create_pool(settings.database.dsn.get_secret_value(), min_size=1, max_size=4)
    out: dict[str, object] = {}
    async with ServiceTitanClient(settings.servicetitan) as client:
        store = CredentialStore(pool, SecretCipher.from_file(settings.secrets.key_file))
        engine = SyncEngine(
            pool,
            client,
            store,
            app_key=settings.servicetitan.resolve_app_key(),
            commit_batch_records=settings.sync.commit_batch_records,
        )
        credential = await store.get(uuid.UUID(args.credential))
        gc.freeze()
        watcher = (
            asyncio.create_task(_watch_peak())
            if os.environ.get("STSYNC_BENCH_TRACEMALLOC")
            else None
        )

        async def one(data_type: str) -> None:
            clock = time.perf_counter()
            result = await engine.synchronize(
                SyncRequest(
                    credential, DataType(data_type), mode=SyncMode(args.mode), timeout_seconds=86400
                )
            )
            seconds = time.perf_counter() - clock
            if result.error_message:
                raise SystemExit(f"sync failed: {result.error_message}")
            out[data_type] = {
                "seconds": seconds,
                "records": result.records_processed,
                "pages": result.pages,
                "timings": result.timings,
            }

        clock = time.perf_counter()
        data_types = args.data_types.split(",")
        if args.concurrent:
            # As the daemon runs a tenant's data types: side by side.
            await asyncio.gather(*(one(data_type) for data_type in data_types))
        else:
            for data_type in data_types:
                await one(data_type)
        out["seconds"] = time.perf_counter() - clock
    await pool.close()
    if watcher is not None:
        watcher.cancel()
    if os.environ.get("STSYNC_BENCH_TRACEMALLOC"):
        snapshot = _PEAK[1] or tracemalloc.take_snapshot()
        for stat in snapshot.statistics("traceback")[:6]:
            print(stat, file=sys.stderr)
            for line in stat.traceback.format()[-8:]:
                print("   ", line, file=sys.stderr)
        for stat in snapshot.statistics("lineno")[:8]:
            print(stat, file=sys.stderr)
        print("peak traced MB", tracemalloc.get_traced_memory()[1] / 1e6, file=sys.stderr)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True)
    parser.add_argument("--credential", required=True)
    parser.add_argument("--data-types", default="customers")
    parser.add_argument("--mode", default="full")
    parser.add_argument("--concurrent", action="store_true", help="sync the data types at once")
    import uvloop

    print(orjson.dumps(uvloop.run(main(parser.parse_args()))).decode())
