"""The runner in-process, for orderings a subprocess daemon cannot stage."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stsync_daemon.config import Settings
from stsync_daemon.control.protocol import RetryRequest
from stsync_daemon.daemon.runner import Runner
from stsync_daemon.metrics import Metrics
from stsync_daemon.servicetitan import ServiceTitanClient
from stsync_daemon.store.credentials import CredentialStore
from stsync_daemon.store.crypto import SecretCipher
from stsync_daemon.store.db import create_pool
from stsync_daemon.sync.engine import SyncEngine
from tests.support import write_key


async def test_a_run_that_ends_at_once_still_reaches_its_subscriber(
    database_dsn: str, tmp_path: Path
) -> None:
    """Start returns before the run can move: an empty run ends while start is still announcing."""
    settings = Settings(database={"dsn": database_dsn})
    pool = await create_pool(database_dsn, min_size=1, max_size=4)
    store = CredentialStore(pool, SecretCipher.from_file(write_key(tmp_path)))
    client = ServiceTitanClient(settings.servicetitan)

    async def slow_notify(_payload: str) -> None:
        await asyncio.sleep(0.3)

    runner = Runner(
        pool=pool,
        engine=SyncEngine(pool, client, store, app_key=None),
        credentials=store,
        client=client,
        settings=settings,
        metrics=Metrics(),
        instance="test",
        notify=slow_notify,
    )
    try:
        run = await runner.start(RetryRequest())
        queue = runner.subscribe(run)
        events = []
        while (event := await asyncio.wait_for(queue.get(), 10)) is not None:
            events.append(event["event"])
        assert events == ["run.started", "run.finished"]
    finally:
        await client.close()
        await pool.close()
