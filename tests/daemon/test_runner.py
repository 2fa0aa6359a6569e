"""The runner in-process, for orderings a subprocess daemon cannot stage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import SecretStr

from stsync_daemon.config import Settings
from stsync_daemon.control.protocol import ProcessRequest, RetryRequest
from stsync_daemon.control.server import ControlServer, ControlServices
from stsync_daemon.daemon.events import EventQueue
from stsync_daemon.daemon.runner import Run, Runner
from stsync_daemon.metrics import Metrics
from stsync_daemon.sandbox import FaultRule, Sandbox, SandboxConfig
from stsync_daemon.servicetitan import ServiceTitanClient
from stsync_daemon.store.credentials import CredentialStore, NewCredential
from stsync_daemon.store.crypto import SecretCipher
from stsync_daemon.store.db import create_pool
from stsync_daemon.sync.engine import SyncEngine
from tests.support import APP_KEY, settings_for, tenant, write_key


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


TENANT = tenant(901, customers=600, invoices=300)


@contextlib.asynccontextmanager
async def running_runner(database_dsn: str, directory: Path) -> AsyncIterator[Runner]:
    """A runner claiming work against a slow sandbox (50 ms a page), with one credential."""
    config = SandboxConfig(
        tenants=(TENANT,), export_page_size=30, faults=(FaultRule(latency_ms=50),)
    )
    async with contextlib.AsyncExitStack() as stack:
        sandbox = await stack.enter_async_context(Sandbox(config))
        key = write_key(directory)
        settings = settings_for(
            sandbox, database_dsn, key, servicetitan={"requests_per_second": 1000}
        )
        pool = await create_pool(database_dsn, min_size=1, max_size=8)
        stack.push_async_callback(pool.close)
        client = ServiceTitanClient(settings.servicetitan)
        stack.push_async_callback(client.close)
        store = CredentialStore(pool, SecretCipher.from_file(key))
        runner = Runner(
            pool=pool,
            engine=SyncEngine(
                pool, client, store, app_key=SecretStr(APP_KEY), commit_batch_records=30
            ),
            credentials=store,
            client=client,
            settings=settings,
            metrics=Metrics(),
            instance="test",
        )
        await store.add(
            NewCredential(
                company_id="co901",
                company_name="Company 901",
                environment=TENANT.environment,
                tenant_id=TENANT.tenant_id,
                client_id=TENANT.client_id,
                client_secret=SecretStr(TENANT.client_secret),
            )
        )
        work = asyncio.create_task(runner.work_loop())

        async def stop() -> None:
            await runner.shutdown(1)
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work

        stack.push_async_callback(stop)
        yield runner


async def read_all(queue: EventQueue) -> list[dict[str, Any] | None]:
    events: list[dict[str, Any] | None] = []
    while (event := await asyncio.wait_for(queue.get(), 30)) is not None:
        events.append(event)
    return [*events, None]


async def test_a_subscriber_that_never_reads_gets_at_most_the_bound_and_run_finished_last(
    database_dsn: str, tmp_path: Path
) -> None:
    async with running_runner(database_dsn, tmp_path) as runner:
        run = await runner.start(ProcessRequest())
        sleeper = runner.subscribe(run, bound=8)
        reader = asyncio.create_task(read_all(runner.subscribe(run)))
        summary = await asyncio.wait_for(asyncio.shield(run.task), 60)  # type: ignore[arg-type]
        assert summary["successful_syncs"] == 2
        everything = await reader
        assert sleeper.qsize() <= 8
        kept = await read_all(sleeper)
    # The reader got every progress event; the sleeper only what fits, and every other event.
    progress = [e for e in everything if e is not None and e["event"] == "sync.progress"]
    assert len(progress) > 8
    assert sleeper.dropped == len(everything) - len(kept) > 0
    essentials = [e for e in everything if e is None or e["event"] != "sync.progress"]
    assert [e for e in kept if e is None or e["event"] != "sync.progress"] == essentials
    assert kept[0] is not None and kept[0]["event"] == "run.started"
    assert kept[-2] is not None and kept[-2]["event"] == "run.finished"
    assert kept[-1] is None


async def test_a_client_gone_mid_run_leaves_no_queue_and_the_run_completes(
    database_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_runner(database_dsn, tmp_path) as runner:
        runs: list[Run] = []
        subscribe = runner.subscribe

        def remember(run: Run, **kwargs: Any) -> EventQueue:
            runs.append(run)
            return subscribe(run, **kwargs)

        monkeypatch.setattr(runner, "subscribe", remember)
        control = ControlServer(
            # Only the runner is asked for in a process request.
            services=cast(ControlServices, SimpleNamespace(runner=runner)),
            socket_path=tmp_path / "control.sock",
            socket_mode=0o600,
            allowed_group=None,
        )
        await control.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(control.path))
            body = b'{"max_concurrent": 2}'
            writer.write(
                b"POST /v1/process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            seen = b""
            while b"run.started" not in seen:
                seen += await asyncio.wait_for(reader.read(4096), 30)
            writer.close()  # gone, in the middle of the run
            await writer.wait_closed()

            [run] = runs
            assert run.task is not None
            for _ in range(100):
                if not run.subscribers:
                    break
                await asyncio.sleep(0.05)
            assert run.subscribers == []
            assert not run.task.done(), "the run should still be going"
            summary = await asyncio.wait_for(asyncio.shield(run.task), 60)
            assert summary["status"] == "completed" and summary["successful_syncs"] == 2
            assert runner.running_runs == 0
        finally:
            await control.stop()
