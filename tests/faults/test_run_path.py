"""Faults on the run path: a small pool, overlapping runs, claims cut by outages, PostgreSQL restarting
in the middle of a run, and which credentials schedules leave alone. In-process runner, real
PostgreSQL, real sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stsync_daemon.control.protocol import ProcessRequest, RetryRequest
from stsync_daemon.daemon.runner import Runner
from stsync_daemon.embedded.postgres import PrivateCluster
from stsync_daemon.enums import CredentialStatus, DataType, Environment, SyncStatus, Trigger
from stsync_daemon.errors import DatabaseError
from stsync_daemon.metrics import Metrics
from stsync_daemon.sandbox import FaultRule, SandboxConfig
from tests.support import Rig, engine_rig, tenant

PROD = Environment.PRODUCTION


def make_runner(rig: Rig) -> Runner:
    return Runner(
        pool=rig.pool,
        engine=rig.engine,
        credentials=rig.store,
        client=rig.client,
        settings=rig.settings,
        metrics=Metrics(),
        instance="test",
    )


@contextlib.asynccontextmanager
async def running(rig: Rig) -> AsyncIterator[Runner]:
    """A runner over the rig with its claim loop going, as the daemon runs it."""
    runner = make_runner(rig)
    work = asyncio.create_task(runner.work_loop())
    try:
        yield runner
    finally:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        await runner.shutdown(0)


def sandbox_of(*tenant_ids: int, **sizes: int) -> SandboxConfig:
    sizes = sizes or {"customers": 150, "invoices": 50}
    return SandboxConfig(
        tenants=tuple(tenant(t, **sizes) for t in tenant_ids), export_page_size=50, seed=3
    )


async def test_syncs_that_all_fail_auth_never_wait_for_a_second_connection(
    database_dsn: str, tmp_path: Path
) -> None:
    """Two pooled connections, both held by syncs: marking their credentials must not need a third."""
    config = sandbox_of(11, 12, 13, 14)
    async with engine_rig(
        config,
        database_dsn,
        tmp_path,
        pool_max_size=2,
        database={"pool_max_size": 3},
        sync={"max_concurrent_total": 2},
    ) as rig:
        creds = [await rig.add(t) for t in (11, 12, 13, 14)]
        for cred in creds:
            rig.sandbox.revoke(cred.client_id)
        async with running(rig) as runner:
            run = await runner.start(ProcessRequest(max_concurrent=4))
            assert run.task is not None
            summary = await asyncio.wait_for(run.task, 60)
        assert summary["failed_syncs"] == 8 and summary["status"] == "completed"
        for cred in creds:
            assert (await rig.store.get(cred.id)).status is CredentialStatus.ERROR


async def test_the_daemon_wide_cap_bounds_overlapping_runs(
    database_dsn: str, tmp_path: Path
) -> None:
    config = sandbox_of(21, 22, 23, 24, 25, 26)
    async with engine_rig(config, database_dsn, tmp_path, sync={"max_concurrent_total": 2}) as rig:
        for t in (21, 22, 23, 24, 25, 26):
            await rig.add(t)
        rig.sandbox.set_faults(FaultRule(latency_ms=60))
        peak = 0
        async with running(rig) as runner:
            first = await runner.start(ProcessRequest(max_concurrent=3, data_type="customers"))
            second = await runner.start(ProcessRequest(max_concurrent=3, data_type="invoices"))
            runs = asyncio.gather(first.task, second.task)  # type: ignore[arg-type]
            while not runs.done():
                peak = max(peak, runner.running_syncs)
                await asyncio.sleep(0.01)
            summaries = await runs
        assert peak == 2  # both runs wanted 3; together they never passed the cap
        assert [s["successful_syncs"] for s in summaries] == [6, 6]


async def test_an_item_whose_sync_could_not_start_goes_back_to_pending(
    database_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim committed, then PostgreSQL went away before the sync's row: not done, not lost."""
    async with engine_rig(sandbox_of(31), database_dsn, tmp_path) as rig:
        await rig.add(31)
        real = rig.engine.synchronize
        failures = {"left": 2}

        async def flaky(request: Any, **kwargs: Any) -> Any:
            if failures["left"]:
                failures["left"] -= 1
                raise DatabaseError("cannot reach PostgreSQL: connection refused")
            return await real(request, **kwargs)

        monkeypatch.setattr(rig.engine, "synchronize", flaky)
        async with running(rig) as runner:
            run = await runner.start(ProcessRequest())
            summary = await asyncio.wait_for(run.task, 60)  # type: ignore[arg-type]
        assert failures["left"] == 0
        assert (summary["successful_syncs"], summary["failed_syncs"]) == (2, 0), summary
        await rig.assert_equal_truth(31, DataType.CUSTOMERS)


async def test_claims_whose_return_to_pending_was_lost_are_released(
    database_dsn: str, tmp_path: Path
) -> None:
    async with engine_rig(sandbox_of(32), database_dsn, tmp_path) as rig:
        cred = await rig.add(32)
        async with running(rig) as runner:
            run_id = uuid.uuid4()
            await rig.pool.execute(
                "INSERT INTO stsync.runs (id, action, trigger, instance) "
                "VALUES ($1, 'process', 'manual', 'elsewhere')",
                run_id,
            )
            await rig.pool.execute(
                "INSERT INTO stsync.run_items (run_id, position, credential_id, data_type, mode, "
                "trigger, status, claimed_by, claimed_at, sync_id) VALUES "
                "($1, 0, $2, 'customers', 'incremental', 'manual', 'claimed', 'test', "
                "now() - interval '10 minutes', gen_random_uuid()), "
                "($1, 1, $2, 'invoices', 'incremental', 'manual', 'claimed', 'test', now(), "
                "gen_random_uuid())",
                run_id,
                cred.id,
            )
            await runner.release_stale_claims()
            statuses = dict(
                await rig.pool.fetch(
                    "SELECT data_type, status FROM stsync.run_items WHERE run_id = $1", run_id
                )
            )
        # The old claim goes back (and is then picked up and synced); the fresh one is left alone.
        assert statuses["invoices"] == "claimed"
        assert statuses["customers"] in ("pending", "claimed", "done")


async def test_schedules_of_every_action_leave_parked_credentials_alone(
    database_dsn: str, tmp_path: Path
) -> None:
    async with engine_rig(sandbox_of(41, 42, 43, 44), database_dsn, tmp_path) as rig:
        errored, disabled, unscheduled, fine = [await rig.add(t) for t in (41, 42, 43, 44)]
        await rig.store.set_status(errored.id, CredentialStatus.ERROR, "rejected by ServiceTitan")
        await rig.store.set_status(disabled.id, CredentialStatus.DISABLED)
        await rig.store.update(unscheduled.id, schedule_enabled=False)
        for cred in (errored, disabled, unscheduled, fine):
            await rig.pool.execute(
                "INSERT INTO stsync.sync_log (id, credential_id, data_type, trigger, mode, status, "
                "completed_at) VALUES (gen_random_uuid(), $1, 'customers', 'scheduled', "
                "'incremental', 'failed', now())",
                cred.id,
            )
        async with running(rig) as runner:
            scheduled = await runner.start(
                RetryRequest(),
                Trigger.SCHEDULED,
                schedule_name="retry",
                scheduled_for=datetime.now(UTC),
            )
            assert [i.credential.id for i in scheduled.items] == [fine.id]
            reasons = {s["credential_id"]: s["reason"] for s in scheduled.skipped}
            assert reasons == {
                str(errored.id): "credential in error: rejected by ServiceTitan",
                str(disabled.id): "credential disabled",
                str(unscheduled.id): "scheduled syncs turned off for this credential",
            }
            await asyncio.wait_for(scheduled.task, 60)  # type: ignore[arg-type]
            # A manual retry may name what schedules leave alone (but not a disabled credential).
            manual = await runner.start(RetryRequest())
            assert {i.credential.id for i in manual.items} == {errored.id, unscheduled.id}
            await asyncio.wait_for(manual.task, 60)  # type: ignore[arg-type]


# --- PostgreSQL restarting in the middle of a run ---------------------------------------------


@pytest.mark.timeout(180)
async def test_a_run_rides_out_a_database_restart_and_finishes(
    own_cluster: PrivateCluster, tmp_path: Path
) -> None:
    dsn = own_cluster.dsn()
    tenants = (51, 52, 53)
    async with engine_rig(sandbox_of(*tenants), dsn, tmp_path) as rig:
        for t in tenants:
            await rig.add(t)
        rig.sandbox.set_faults(FaultRule(latency_ms=150))
        async with running(rig) as runner:
            run = await runner.start(ProcessRequest(max_concurrent=1))
            for _ in range(200):
                if runner.running_syncs:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.4)
            await asyncio.to_thread(own_cluster.stop)
            await asyncio.sleep(3)
            assert not run.task.done()  # type: ignore[union-attr]
            await asyncio.to_thread(own_cluster.start)
            summary = await asyncio.wait_for(run.task, 120)  # type: ignore[arg-type]
            assert summary["total_syncs"] >= 5, summary  # the pending items ran once it was back
            left = await rig.pool.fetchval(
                "SELECT count(*) FROM stsync.run_items WHERE status IN ('pending', 'claimed')"
            )
            assert left == 0
            assert await rig.pool.fetchval("SELECT status FROM stsync.runs") != "running"
            # ...and the next run after the outage brings every tenant to the truth.
            rig.sandbox.set_faults()
            again = await runner.start(ProcessRequest(max_concurrent=3))
            second = await asyncio.wait_for(again.task, 60)  # type: ignore[arg-type]
            assert second["failed_syncs"] == 0, second
        for t in tenants:
            for data_type in DataType:
                await rig.assert_equal_truth(t, data_type)
        statuses = {r["status"] for r in await rig.pool.fetch("SELECT status FROM stsync.sync_log")}
        assert SyncStatus.RUNNING.value not in statuses


async def test_syncs_cancelled_before_their_first_step_leave_no_slot_or_claim_behind(
    database_dsn: str, tmp_path: Path
) -> None:
    """A task cancelled before it ever ran skips its own cleanup: it must be told to stop instead."""
    async with engine_rig(
        sandbox_of(33, 34), database_dsn, tmp_path, sync={"max_concurrent_total": 2}
    ) as rig:
        for t in (33, 34):
            await rig.add(t)
        runner = make_runner(rig)
        run = await runner.start(ProcessRequest(max_concurrent=2))
        await runner._claim_round()  # two syncs claimed, their tasks created, none started yet
        assert runner.running_syncs == 2
        assert runner._cancel_local(run.id, SyncStatus.CANCELLED)
        await rig.pool.execute(
            "UPDATE stsync.run_items SET status = 'cancelled' WHERE status = 'pending'"
        )
        summary = await asyncio.wait_for(run.task, 30)  # type: ignore[arg-type]
        assert summary["status"] == "cancelled"
        assert runner.running_syncs == 0 and not runner._slots.locked()
        reasons = [s["reason"] for s in summary["skipped"]]
        assert reasons.count("cancelled by an operator before it started") == 2, reasons
        await runner.shutdown(0)
