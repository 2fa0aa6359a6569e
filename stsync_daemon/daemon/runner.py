"""Runs: batches of syncs, spread over every instance that shares the database.

A run's (credential, data type) pairs become rows in `stsync.run_items`; each instance claims pending
ones (`FOR UPDATE SKIP LOCKED`) while it has capacity under the run's `max_concurrent`, so one
instance alone behaves as a semaphore-bounded batch and several share the work. The instance that
created a run supervises it: it streams events, waits for every item, and writes the summary. A run
belongs to the runner, not to whoever asked for it: a client that disconnects leaves it going;
`cancel()` and `shutdown()` are the ways to stop one.

What a request selects is `planning.py`'s; the run and its events are `runs.py`'s; the SQL is
`store/runs.py`'s. This module claims, runs and supervises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import orjson

from ..config import Settings
from ..enums import (
    CredentialStatus,
    DataType,
    Environment,
    ErrorCategory,
    SyncMode,
    SyncStatus,
    Trigger,
)
from ..errors import DatabaseError, NotFoundError, StsyncError
from ..logs import log_event
from ..metrics import Metrics
from ..requests import ProcessRequest, RetryRequest
from ..servicetitan import ServiceTitanClient
from ..store.credentials import Credential, CredentialStore
from ..store.db import DB_ERRORS, describe_db_error
from ..store.runs import NewItem, RunStore
from ..store.syncs import SyncStore
from ..sync.engine import (
    SyncAlreadyRunning,
    SyncControl,
    SyncEngine,
    SyncRequest,
    SyncResult,
)
from ..views import (
    EVENT_RUN_FINISHED,
    EVENT_SYNC_FINISHED,
    EVENT_SYNC_STARTED,
    Plan,
    RunSummary,
    SkippedView,
    SyncView,
    iso,
)
from .events import SUBSCRIBER_BOUND, EventQueue, Stream
from .planning import Planner, WorkItem
from .runs import (
    LocalSync,
    Run,
    TickNotClaimed,
    progress_publisher,
    started_event,
    sync_event,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Event = dict[str, Any]
Notify = Callable[[str], Awaitable[None]]
_POLL_SECONDS = 1.0
_SUPERVISE_POLL_SECONDS = 0.5
# A claim older than this with no sync row and no local task was lost in an outage.
_STALE_CLAIM_SECONDS = 60.0
# Waits between attempts while PostgreSQL is away (claims, supervision, a run's summary).
_OUTAGE_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 15.0)


def outage_delay(attempt: int) -> float:
    """The wait before attempt `attempt + 1` of something PostgreSQL refused `attempt` times."""
    return _OUTAGE_BACKOFF_SECONDS[min(max(attempt, 1), len(_OUTAGE_BACKOFF_SECONDS)) - 1]


class Runner:
    """Plans runs, claims and executes their syncs, and supervises the runs it created."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        engine: SyncEngine,
        credentials: CredentialStore,
        client: ServiceTitanClient,
        settings: Settings,
        metrics: Metrics,
        instance: str,
        notify: Notify | None = None,
        credential_status_changed: Callable[[], None] | None = None,
    ) -> None:
        self._runs = RunStore(pool, instance)
        self._syncs = SyncStore(pool)
        self._engine = engine
        self.planner = Planner(
            credentials=credentials, syncs=self._syncs, client=client, settings=settings
        )
        self._settings = settings
        self._metrics = metrics
        self._instance = instance
        self._notify = notify
        self._credential_status_changed = credential_status_changed
        self._owned: dict[uuid.UUID, Run] = {}
        self._local: dict[tuple[uuid.UUID, uuid.UUID, str], LocalSync] = {}
        self._wakeup = asyncio.Event()
        self._freed: set[uuid.UUID] = set()  # runs with a slot freed since the last claim round
        self._limits: dict[uuid.UUID, tuple[int, float]] = {}  # run -> max_concurrent, timeout
        # The daemon-wide cap on syncs in flight, whatever runs they belong to: a sync holds a slot
        # (and one pooled connection) from its claim to its end.
        self._slots = asyncio.Semaphore(settings.sync.max_concurrent_total)
        self._accepting = True
        self._claiming = True

    # -- queries ---------------------------------------------------------------------------

    @property
    def running_runs(self) -> int:
        return len(self._owned)

    @property
    def running_syncs(self) -> int:
        return len(self._local)

    def describe_running(self) -> str:
        """One line for systemd's STATUS=."""
        if not self._owned and not self._local:
            return "idle"
        return f"{self.running_runs} run(s) supervised, {self.running_syncs} sync(s) in flight"

    def wake(self) -> None:
        """Look for claimable work now rather than at the next poll."""
        self._wakeup.set()

    async def plan_for(self, request: ProcessRequest | RetryRequest) -> Plan:
        """The dry run of a process or retry request."""
        return await self.planner.plan_for(request)

    # -- execution ---------------------------------------------------------------------------

    async def start(
        self,
        request: ProcessRequest | RetryRequest,
        trigger: Trigger = Trigger.MANUAL,
        *,
        schedule_name: str | None = None,
        scheduled_for: datetime | None = None,
    ) -> Run:
        """Start a run; raises `TickNotClaimed` when a scheduled tick is not this one's to run."""
        action, (items, skipped) = await self.planner.select(request, trigger)
        return await self._start(
            action,
            trigger,
            items,
            skipped,
            params=request.model_dump(mode="json"),
            max_concurrent=request.max_concurrent,
            timeout_seconds=request.timeout_seconds,
            schedule_name=schedule_name,
            scheduled_for=scheduled_for,
        )

    async def _start(
        self,
        action: str,
        trigger: Trigger,
        items: list[WorkItem],
        skipped: list[SkippedView],
        *,
        params: dict[str, Any],
        max_concurrent: int | None,
        timeout_seconds: float | None,
        schedule_name: str | None,
        scheduled_for: datetime | None,
    ) -> Run:
        if not self._accepting:
            raise StsyncError("the daemon is shutting down and accepts no new runs")
        run_id = uuid.uuid4()
        concurrency = max_concurrent or self._settings.sync.max_concurrent
        timeout = timeout_seconds or self._settings.sync.timeout_seconds
        started_at = await self._runs.create_run(
            run_id,
            action=action,
            trigger=trigger.value,
            params=orjson.dumps(params),
            max_concurrent=concurrency,
            timeout_seconds=timeout,
            items=[
                NewItem(
                    i.credential.id,
                    i.data_type.value,
                    i.mode.value,
                    i.trigger.value,
                    i.retry_of,
                    i.attempt,
                )
                for i in items
            ],
            schedule=(
                (schedule_name, scheduled_for)
                if schedule_name is not None and scheduled_for is not None
                else None
            ),
        )
        if isinstance(started_at, str):
            raise TickNotClaimed(started_at)
        run = Run(
            id=run_id,
            action=action,
            trigger=trigger,
            schedule_name=schedule_name,
            items=items,
            skipped=skipped,
            timeout_seconds=timeout,
            started_at=started_at,
        )
        self._owned[run_id] = run
        log_event(
            logger,
            logging.INFO,
            "run.started",
            run_id=run_id,
            action=action,
            trigger=trigger,
            schedule=schedule_name,
            syncs=len(items),
            credentials=run.total_credentials,
            skipped=len(skipped),
            max_concurrent=concurrency,
        )
        await self._announce("work")
        # Nothing of the run happens before the caller gets it back (no await from here on), so a
        # subscriber that subscribes at once sees every event, even of a run that ends at once.
        run.task = asyncio.create_task(self._supervise(run), name=f"stsync-run-{run_id}")
        self.wake()
        return run

    async def _announce(self, payload: str) -> None:
        if self._notify is None:
            return
        try:
            await self._notify(payload)
        except DB_ERRORS as exc:
            log_event(
                logger, logging.WARNING, "cluster.notify_failed", error=describe_db_error(exc)
            )

    def on_notification(self, payload: str) -> None:
        """A message from another instance (or ourselves) on the cluster channel."""
        kind, _, value = payload.partition(":")
        if kind == "work":
            self.wake()
        elif kind == "done":
            with contextlib.suppress(ValueError):
                run = self._owned.get(uuid.UUID(value))
                if run is not None:
                    run.changed.set()
        elif kind in ("cancel-run", "cancel-sync"):
            with contextlib.suppress(ValueError):
                self._cancel_local(uuid.UUID(value), SyncStatus.CANCELLED)

    async def launch(self, request: ProcessRequest | RetryRequest) -> Stream:
        """Start a manual run and follow its events (what `stsyncctl process` and `retry` do)."""
        run = await self.start(request)
        queue = self.subscribe(run)
        return Stream(queue, lambda: self.unsubscribe(run, queue))

    def subscribe(self, run: Run, *, bound: int = SUBSCRIBER_BOUND) -> EventQueue:
        """A bounded queue of this run's events, ending with None after `run.finished`; whoever
        subscribes must `unsubscribe` when done (or gone), so that no queue outlives its reader."""
        queue = EventQueue(bound)
        queue.put_nowait(started_event(run))
        run.subscribers.append(queue)
        return queue

    def unsubscribe(self, run: Run, queue: EventQueue) -> None:
        """Stop delivering a run's events to a queue; harmless if it was removed already."""
        with contextlib.suppress(ValueError):
            run.subscribers.remove(queue)

    # -- claiming and running items -----------------------------------------------------------

    async def work_loop(self, beat: Callable[[], None] | None = None) -> None:
        """Claim pending items of any running run while this instance has capacity.

        Rides out PostgreSQL outages: a failed round is retried with backoff, and nothing claimed
        is lost (an item whose sync never started goes back to pending). `beat` is called after
        each round that did not crash (an outage is not a crash).
        """
        failures = 0
        while True:
            if beat is not None:
                beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), _POLL_SECONDS)
            self._wakeup.clear()
            if not self._claiming:
                continue
            try:
                await self._claim_round()
            except DB_ERRORS as exc:
                failures += 1
                log_event(
                    logger,
                    logging.WARNING,
                    "cluster.claim_failed",
                    error=describe_db_error(exc),
                    attempt=failures,
                )
                await asyncio.sleep(outage_delay(failures))
            else:
                failures = 0

    async def _claim_round(self) -> None:
        freed, self._freed = self._freed, set()
        if freed and freed <= self._limits.keys():
            # Slots of runs already listed just freed: refill them without listing runs again.
            for run_id in freed:
                await self._claim(run_id, *self._limits[run_id])
            return
        self._limits = {}
        for run_id, max_concurrent, timeout in await self._runs.with_pending_items():
            self._limits[run_id] = (max_concurrent, timeout)
            await self._claim(run_id, max_concurrent, timeout)

    async def _claim(self, run_id: uuid.UUID, max_concurrent: int, limit_seconds: float) -> None:
        in_flight = sum(1 for key in self._local if key[0] == run_id)
        free = max_concurrent - in_flight
        if free <= 0 or not self._claiming:
            return
        slots = 0
        while slots < free and not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            slots += 1
        claimed: list[asyncpg.Record] = []
        try:
            if slots:
                claimed = await self._runs.claim_items(run_id, slots)
        finally:
            for _ in range(slots - len(claimed)):
                self._slots.release()
        for item in claimed:
            key = (run_id, item["credential_id"], item["data_type"])
            local = LocalSync(run_id, item["sync_id"], SyncControl())
            self._local[key] = local
            local.task = asyncio.create_task(
                self._run_item(run_id, limit_seconds, item, local),
                name=f"stsync-sync-{item['sync_id']}",
            )

    async def release_stale_claims(self) -> None:
        """Items this instance claimed whose sync never started nor runs here go back to pending.

        The claim committed, then PostgreSQL went away before the sync's row was written (or the
        item's return to pending failed): without this, the run would wait for them forever.
        """
        running = [local.sync_id for local in self._local.values()]
        released = await self._runs.release_stale_claims(running, _STALE_CLAIM_SECONDS)
        if released:
            log_event(logger, logging.WARNING, "run.claims_released", items=released)
            self.wake()

    async def _run_item(
        self, run_id: uuid.UUID, limit_seconds: float, item: asyncpg.Record, local: LocalSync
    ) -> None:
        data_type = DataType(item["data_type"])
        key = (run_id, item["credential_id"], item["data_type"])
        outcome: str | None = None
        run = self._owned.get(run_id)
        env: Environment | None = None
        started = False
        unclaim = False
        result: SyncResult | None = None
        local.started = True
        try:
            if local.stop_before_start:
                outcome = (
                    "cancelled by an operator before it started"
                    if local.control.cancel_status is SyncStatus.CANCELLED
                    else "interrupted: the daemon stopped before it started"
                )
                return
            credential = Credential.from_row(item)
            env = credential.environment
            request = SyncRequest(
                credential=credential,
                data_type=data_type,
                mode=SyncMode(item["mode"]),
                trigger=Trigger(item["trigger"]),
                run_id=run_id,
                retry_of=item["retry_of"],
                attempt=item["attempt"],
                timeout_seconds=limit_seconds,
                sync_id=item["sync_id"],
            )
            self._metrics.sync_started(env, data_type)
            started = True
            if run is not None:
                run.publish(
                    sync_event(
                        EVENT_SYNC_STARTED,
                        run_id,
                        credential,
                        data_type,
                        mode=item["mode"],
                        sync_id=str(item["sync_id"]),
                    )
                )
            result = await self._engine.synchronize(
                request,
                progress=progress_publisher(run, credential, data_type),
                control=local.control,
            )
        except SyncAlreadyRunning as exc:
            outcome = f"skipped: {exc}"
        except asyncio.CancelledError:
            result = local.control.result
            raise
        except DatabaseError:
            # PostgreSQL went away before the sync had a row: the item is not done, only not
            # started. Back to pending; the claim loop takes it again once the database is back.
            unclaim = local.control.sync_id is None
            outcome = None if unclaim else "could not start: the database went away"
        except StsyncError as exc:
            outcome = f"could not start: {exc}"
        except Exception as exc:
            logger.critical("run.sync_crashed", exc_info=exc)
            outcome = f"unexpected: {type(exc).__name__}: {exc}"
        finally:
            self._local.pop(key, None)
            self._slots.release()
            self._freed.add(run_id)
            self.wake()  # the slot is free: claim the next item while this one is booked
            if started and env is not None:
                self._record(result or local.control.result, env, data_type)
            with contextlib.suppress(*DB_ERRORS):
                if unclaim:
                    await asyncio.shield(
                        self._runs.unclaim_item(run_id, item["credential_id"], item["data_type"])
                    )
                else:
                    await asyncio.shield(
                        self._runs.finish_item(
                            run_id, item["credential_id"], item["data_type"], outcome
                        )
                    )
            if run is not None:
                run.changed.set()
            else:
                await self._announce(f"done:{run_id}")

    def _record(self, result: SyncResult | None, env: Environment, data_type: DataType) -> None:
        if result is None:
            # Never started (already running elsewhere, or the database refused): not a sync.
            self._metrics.syncs_running.labels(env, data_type).dec()
            return
        self._metrics.sync_finished(
            env,
            data_type,
            result.status,
            result.error_category,
            result.duration_seconds,
            result.records_successful,
            result.records_failed,
        )
        credential = result.request.credential
        if self._credential_status_changed is not None and (
            result.credential_outcome == "error"
            or (
                result.credential_outcome == "ok"
                and credential.status is not CredentialStatus.ACTIVE
            )
        ):
            # The sync moved its credential in or out of `error`: the gauges must say so now.
            self._credential_status_changed()
        if result.status is SyncStatus.COMPLETED and result.completed_at is not None:
            self._metrics.last_success(
                str(credential.id),
                credential.company_id,
                credential.environment,
                data_type,
                result.completed_at,
            )

    # -- supervising a run ------------------------------------------------------------------

    async def _supervise(self, run: Run) -> RunSummary:
        """Wait for every item of the run, publishing syncs as they finish, then write its summary.

        PostgreSQL going away does not end it: it polls again with backoff until the database is
        back and the run's items are done, so a run never stays `running` while its owner lives.
        """
        clock0 = time.monotonic()
        published: set[str] = set()
        failures = 0
        try:
            while not run.stop_waiting:
                try:
                    await self._publish_finished(run, published)
                    open_items, _ = await self._runs.progress(run.id)
                except DB_ERRORS as exc:
                    failures += 1
                    log_event(
                        logger,
                        logging.WARNING,
                        "run.supervise_failed",
                        run_id=run.id,
                        attempt=failures,
                        error=describe_db_error(exc),
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(run.changed.wait(), outage_delay(failures))
                    run.changed.clear()
                    continue
                failures = 0
                if open_items == 0:
                    with contextlib.suppress(*DB_ERRORS):
                        await self._publish_finished(run, published)
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.changed.wait(), _SUPERVISE_POLL_SECONDS)
                run.changed.clear()
        except asyncio.CancelledError:
            run.cancel_status = run.cancel_status or SyncStatus.INTERRUPTED
        summary = await self.finalize(
            run.id,
            run.action,
            run.trigger,
            run.started_at,
            run.skipped,
            time.monotonic() - clock0,
            run.cancel_status,
        )
        run.publish({"event": EVENT_RUN_FINISHED, "summary": summary})
        for queue in run.subscribers:
            queue.put_nowait(None)
        self._owned.pop(run.id, None)
        return summary

    async def _persist(
        self, event: str, run_id: uuid.UUID, attempt: Callable[[], Awaitable[T]]
    ) -> T | None:
        """Retry `attempt` until PostgreSQL takes it; while stopping, give up after two tries (the
        next start, or another instance's sweep, settles what is left)."""
        failures = 0
        while True:
            try:
                return await attempt()
            except DB_ERRORS as exc:
                failures += 1
                log_event(
                    logger,
                    logging.WARNING,
                    event,
                    run_id=run_id,
                    attempt=failures,
                    error=describe_db_error(exc),
                )
                if not self._accepting and failures >= 2:
                    return None
                await asyncio.sleep(outage_delay(failures))

    async def _publish_finished(self, run: Run, published: set[str]) -> None:
        for view in await self._syncs.finished_of_run(run.id):
            if view["id"] not in published:
                published.add(view["id"])
                run.publish({"event": EVENT_SYNC_FINISHED, "run_id": str(run.id), "sync": view})

    async def finalize(
        self,
        run_id: uuid.UUID,
        action: str,
        trigger: Trigger,
        started_at: datetime,
        skipped: list[SkippedView],
        seconds: float | None,
        cancel_status: SyncStatus | None,
    ) -> RunSummary:
        """Write a run's summary from the sync log (every instance's syncs) and close it."""
        skipped = list(skipped)

        async def read() -> tuple[int, list[SyncView], list[SkippedView]]:
            total = await self._runs.credentials_count(run_id)
            finished = await self._syncs.finished_of_run(run_id)
            outcomes: list[SkippedView] = [
                {
                    "credential_id": str(row["credential_id"]),
                    "company_id": row["company_id"],
                    "company": row["company_name"],
                    "environment": row["environment"],
                    "data_type": row["data_type"],
                    "reason": row["outcome"],
                }
                for row in await self._runs.item_outcomes(run_id)
            ]
            return total, finished, outcomes

        found = await self._persist("run.summary_failed", run_id, read)
        total_credentials, syncs, outcomes = found if found is not None else (0, [], [])
        skipped += outcomes
        unexpected = any(o["reason"].startswith("unexpected") for o in outcomes)
        unexpected = unexpected or any(
            s["status"] == SyncStatus.FAILED and s["error_category"] == ErrorCategory.UNEXPECTED
            for s in syncs
        )
        status = cancel_status.value if cancel_status else ("failed" if unexpected else "completed")
        now = datetime.now(UTC)
        successful = sum(1 for s in syncs if s["status"] == SyncStatus.COMPLETED)
        not_started = sum(
            1
            for s in skipped
            if s["reason"].startswith(("could not start", "unexpected", "interrupted"))
        )
        summary: RunSummary = {
            "run_id": str(run_id),
            "action": action,
            "trigger": trigger.value,
            "status": status,
            "total_credentials": total_credentials,
            "total_syncs": len(syncs),
            "successful_syncs": successful,
            "failed_syncs": len(syncs) - successful + not_started,
            "total_records_processed": sum(s["records_processed"] for s in syncs),
            "execution_time_seconds": round(
                seconds if seconds is not None else (now - started_at).total_seconds(), 3
            ),
            "started_at": iso(started_at) or "",
            "completed_at": iso(now) or "",
            "syncs": syncs,
            "skipped": skipped,
        }
        document = orjson.dumps({k: v for k, v in summary.items() if k != "syncs"})
        await self._persist(
            "run.unrecorded",
            run_id,
            lambda: self._runs.finish_run(run_id, status, document),
        )
        self._metrics.run_finished(action, trigger, status)
        log_event(
            logger,
            logging.INFO,
            "run.finished",
            run_id=run_id,
            action=action,
            status=status,
            successful=summary["successful_syncs"],
            failed=summary["failed_syncs"],
            records=summary["total_records_processed"],
            seconds=summary["execution_time_seconds"],
        )
        return summary

    # -- cancellation, failover and shutdown --------------------------------------------------

    def _cancel_local(self, target: uuid.UUID, status: SyncStatus) -> bool:
        """Cancel local syncs of a run, or the local sync with this id; True if any."""
        hit = False
        for local in list(self._local.values()):
            if target in (local.run_id, local.sync_id) and local.task is not None:
                hit = True
                local.stop(status)
        run = self._owned.get(target)
        if run is not None:
            run.cancel_status = status
            run.changed.set()
            hit = True
        return hit

    async def cancel(self, target: uuid.UUID) -> str:
        """Cancel a running run or sync, whichever instance runs it; returns "run" or "sync"."""
        if await self._runs.status(target) == "running":
            await self._runs.cancel_pending_items(target, "cancelled by an operator")
            self._cancel_local(target, SyncStatus.CANCELLED)
            await self._announce(f"cancel-run:{target}")
            return "run"
        running = await self._syncs.running_where(target)
        if running is not None or any(local.sync_id == target for local in self._local.values()):
            if not self._cancel_local(target, SyncStatus.CANCELLED):
                await self._announce(f"cancel-sync:{target}")
            return "sync"
        raise NotFoundError(f"no running run or sync with id {target}")

    async def sweep(self, lease_seconds: float) -> None:
        """Settle items and runs whose instance died, so runs finish and the next tick resumes."""
        for run_id in await self._runs.settle_orphaned_items(lease_seconds):
            run = self._owned.get(run_id)
            if run is not None:
                run.changed.set()
        for orphan in await self._runs.orphaned_runs(lease_seconds):
            if orphan in self._owned:
                continue
            header = await self._runs.header(orphan)
            if header is None:
                continue
            log_event(logger, logging.WARNING, "run.orphan_finalized", run_id=orphan)
            await self.finalize(
                orphan,
                header.action,
                Trigger(header.trigger),
                header.started_at,
                [],
                None,
                SyncStatus.INTERRUPTED,
            )

    async def recover(self) -> None:
        """At start-up: runs this instance left running when it died are closed, not resumed.

        Their pending syncs are cancelled (the next tick or a retry resumes each pair from its
        cursor), exactly as a single daemon always behaved.
        """
        for run_id in await self._runs.own_running():
            await self._runs.cancel_pending_items(
                run_id, "interrupted: the daemon stopped before it started"
            )
        await self._runs.settle_orphaned_items(0.0)
        for run_id in await self._runs.own_running():
            header = await self._runs.header(run_id)
            if header is not None:
                await self.finalize(
                    run_id,
                    header.action,
                    Trigger(header.trigger),
                    header.started_at,
                    [],
                    None,
                    SyncStatus.INTERRUPTED,
                )

    def interrupt_all(self) -> None:
        """Cancel every local sync now, logged `interrupted` (a second stop signal)."""
        for local in list(self._local.values()):
            local.stop(SyncStatus.INTERRUPTED)

    async def shutdown(self, grace_seconds: float) -> None:
        """Stop taking work, let local syncs finish for `grace_seconds`, then interrupt them."""
        self._accepting = False
        self._claiming = False
        for run in self._owned.values():
            with contextlib.suppress(*DB_ERRORS):
                await self._runs.cancel_pending_items(
                    run.id, "interrupted: the daemon stopped before it started"
                )
        tasks = [local.task for local in self._local.values() if local.task is not None]
        if tasks:
            log_event(
                logger,
                logging.INFO,
                "daemon.draining",
                syncs=len(tasks),
                grace_seconds=grace_seconds,
            )
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            if pending:
                self.interrupt_all()
                await asyncio.wait(pending, timeout=10)
        runs = [run for run in self._owned.values() if run.task is not None]
        for run in runs:
            if run.cancel_status is None and tasks:
                run.cancel_status = SyncStatus.INTERRUPTED
            run.stop_waiting = True
            run.changed.set()
        if runs:
            await asyncio.wait([run.task for run in runs if run.task is not None], timeout=10)
