"""Runs: batches of syncs, bounded by a semaphore, each sync bounded by a timeout.

A run is owned by the runner, not by whoever asked for it: a client that disconnects or a scheduler
tick that is cancelled leaves the run going; `cancel()` and `shutdown()` are the ways to stop one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from ..config import Settings
from ..control.protocol import (
    EVENT_RUN_FINISHED,
    EVENT_RUN_STARTED,
    EVENT_SYNC_FINISHED,
    EVENT_SYNC_PROGRESS,
    EVENT_SYNC_STARTED,
    Plan,
    PlanItem,
    ProcessRequest,
    RetryRequest,
    RunSummary,
    ScheduleView,
    SkippedView,
    SyncView,
)
from ..enums import (
    CredentialStatus,
    DataType,
    ErrorCategory,
    SyncMode,
    SyncStatus,
    Trigger,
)
from ..errors import NotFoundError, StsyncError
from ..logs import log_event
from ..metrics import Metrics
from ..servicetitan import ServiceTitanClient
from ..store.credentials import Credential, CredentialStore
from ..store.db import DB_ERRORS, describe_db_error
from ..store.sql import QUERIES
from ..sync.engine import (
    SyncAlreadyRunning,
    SyncControl,
    SyncEngine,
    SyncProgress,
    SyncRequest,
    SyncResult,
)
from .views import iso, skipped_view, sync_view_from_result

logger = logging.getLogger(__name__)

Event = dict[str, Any]


@dataclass(frozen=True)
class WorkItem:
    """One (credential, data type) a run will sync."""

    credential: Credential
    data_type: DataType
    mode: SyncMode
    trigger: Trigger
    retry_of: uuid.UUID | None = None
    attempt: int = 1


@dataclass
class Run:
    """A batch in flight."""

    id: uuid.UUID
    action: str
    trigger: Trigger
    schedule_name: str | None
    items: list[WorkItem]
    skipped: list[SkippedView]
    max_concurrent: int
    timeout_seconds: float
    started_at: datetime
    task: asyncio.Task[RunSummary] | None = None
    controls: dict[tuple[uuid.UUID, DataType], SyncControl] = field(default_factory=dict)
    tasks: dict[tuple[uuid.UUID, DataType], asyncio.Task[None]] = field(default_factory=dict)
    results: list[SyncView] = field(default_factory=list)
    subscribers: list[asyncio.Queue[Event | None]] = field(default_factory=list)
    cancel_status: SyncStatus | None = None
    unexpected: bool = False

    @property
    def total_credentials(self) -> int:
        return len({item.credential.id for item in self.items})

    def publish(self, event: Event) -> None:
        for queue in self.subscribers:
            queue.put_nowait(event)


class Runner:
    """Plans and executes runs; the single place that decides which syncs happen."""

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
    ) -> None:
        self._pool = pool
        self._engine = engine
        self._credentials = credentials
        self._client = client
        self._settings = settings
        self._metrics = metrics
        self._instance = instance
        self._runs: dict[uuid.UUID, Run] = {}
        self._accepting = True
        self.schedule_views: Any = None  # set by the daemon: () -> list[ScheduleView]

    # -- queries ---------------------------------------------------------------------------

    @property
    def running_runs(self) -> int:
        return len(self._runs)

    @property
    def running_syncs(self) -> int:
        return sum(len(run.tasks) for run in self._runs.values())

    def describe_running(self) -> str:
        """One line for systemd's STATUS=."""
        if not self._runs:
            return "idle"
        return f"{self.running_runs} run(s), {self.running_syncs} sync(s) in flight"

    def is_running(self, run_id: uuid.UUID) -> bool:
        return run_id in self._runs

    # -- selection ---------------------------------------------------------------------------

    async def _select_process(
        self, request: ProcessRequest, trigger: Trigger
    ) -> tuple[list[WorkItem], list[SkippedView]]:
        found = await self._credentials.list(
            environment=request.environment,
            company_id=request.company_id,
            credential_id=request.credential_id,
        )
        scheduled = trigger is Trigger.SCHEDULED
        mode = SyncMode.FULL if request.full else SyncMode.INCREMENTAL
        items: list[WorkItem] = []
        skipped: list[SkippedView] = []
        for credential in found:
            reason = None
            if credential.status is CredentialStatus.DISABLED and request.credential_id is None:
                reason = "credential disabled"
            elif scheduled and credential.status is CredentialStatus.ERROR:
                reason = f"credential in error: {credential.last_error or 'fix and enable it'}"
            elif scheduled and not credential.schedule_enabled:
                reason = "scheduled syncs turned off for this credential"
            elif credential.status is CredentialStatus.ERROR and not request.include_errored:
                reason = f"credential in error: {credential.last_error or 'fix and enable it'}"
            for data_type in request.data_type.expand():
                if reason:
                    skipped.append(skipped_view(credential, data_type, reason))
                else:
                    items.append(WorkItem(credential, data_type, mode, trigger))
        return items, skipped

    async def _select_retry(
        self, request: RetryRequest
    ) -> tuple[list[WorkItem], list[SkippedView]]:
        since = datetime.now(UTC) - timedelta(hours=request.max_age_hours)
        rows = await self._pool.fetch(QUERIES["retry_candidates"], since)
        failures = [r for r in rows if r["status"] in ("failed", "timed_out", "interrupted")]
        if not failures:
            return [], []
        by_id = {c.id: c for c in await self._credentials.list()}
        items: list[WorkItem] = []
        skipped: list[SkippedView] = []
        for row in failures:
            credential = by_id.get(row["credential_id"])
            if credential is None:
                continue
            data_type = DataType(row["data_type"])
            reason = None
            if row["attempt"] > request.max_retries:
                reason = (
                    f"gave up after {row['attempt']} attempts (max retries {request.max_retries})"
                )
            elif request.exclude_auth_errors and row["error_category"] == ErrorCategory.AUTH:
                reason = "authentication failure excluded (--exclude-auth-errors)"
            elif credential.status is CredentialStatus.DISABLED:
                reason = "credential disabled"
            if reason:
                skipped.append(skipped_view(credential, data_type, reason))
                continue
            items.append(
                WorkItem(
                    credential,
                    data_type,
                    SyncMode.INCREMENTAL,
                    Trigger.RETRY,
                    retry_of=row["id"],
                    attempt=row["attempt"] + 1,
                )
            )
        return items, skipped

    # -- dry run -----------------------------------------------------------------------------

    async def plan(
        self,
        action: str,
        items: list[WorkItem],
        skipped: list[SkippedView],
        *,
        estimate: bool,
    ) -> Plan:
        """What a run would do; reads only (ServiceTitan too, for estimates)."""
        ids = list({item.credential.id for item in items})
        cursors = {
            (r["credential_id"], r["data_type"]): r
            for r in await self._pool.fetch(QUERIES["select_cursors"], ids)
        }
        successes = {
            (r["credential_id"], r["data_type"]): r["completed_at"]
            for r in await self._pool.fetch(QUERIES["last_success"], ids)
        }
        plan_items: list[PlanItem] = []
        estimates: list[asyncio.Task[tuple[int | None, str | None]]] = []
        for item in items:
            key = (item.credential.id, item.data_type.value)
            cursor = cursors.get(key)
            resumes = (
                item.mode is SyncMode.INCREMENTAL and cursor is not None and cursor["has_token"]
            )
            since = cursor["max_modified_on"] if resumes and cursor else None
            plan_items.append(
                {
                    "credential_id": str(item.credential.id),
                    "company_id": item.credential.company_id,
                    "company": item.credential.company_name,
                    "environment": item.credential.environment.value,
                    "tenant_id": item.credential.tenant_id,
                    "data_type": item.data_type.value,
                    "mode": item.mode.value if resumes else SyncMode.FULL.value,
                    "resume_from": "continuation token" if resumes else "beginning",
                    "cursor_modified_on": iso(since),
                    "last_success_at": iso(successes.get(key)),
                    "estimated_records": None,
                    "estimate_error": None,
                    "retry_of": str(item.retry_of) if item.retry_of else None,
                    "attempt": item.attempt,
                }
            )
            if estimate:
                estimates.append(asyncio.create_task(self._estimate(item, since)))
        if estimates:
            for plan_item, (count, error) in zip(
                plan_items, await asyncio.gather(*estimates), strict=True
            ):
                plan_item["estimated_records"] = count
                plan_item["estimate_error"] = error
        schedules: list[ScheduleView] = self.schedule_views() if self.schedule_views else []
        return {
            "dry_run": True,
            "action": action,
            "total_credentials": len(ids),
            "items": plan_items,
            "skipped": skipped,
            "schedules": schedules,
        }

    async def _estimate(
        self, item: WorkItem, since: datetime | None
    ) -> tuple[int | None, str | None]:
        try:
            access = await self._credentials.access(
                item.credential, self._settings.servicetitan.resolve_app_key()
            )
            count = await self._client.tenant(access).count_changed(item.data_type, since)
        except StsyncError as exc:
            return None, str(exc)
        return count, None

    async def plan_process(
        self, request: ProcessRequest, trigger: Trigger = Trigger.MANUAL
    ) -> Plan:
        items, skipped = await self._select_process(request, trigger)
        return await self.plan("process", items, skipped, estimate=request.estimate)

    async def plan_retry(self, request: RetryRequest) -> Plan:
        items, skipped = await self._select_retry(request)
        return await self.plan("retry", items, skipped, estimate=False)

    # -- execution ---------------------------------------------------------------------------

    async def start_process(
        self,
        request: ProcessRequest,
        trigger: Trigger = Trigger.MANUAL,
        *,
        schedule_name: str | None = None,
        scheduled_for: datetime | None = None,
    ) -> Run | None:
        """Start a run; None when its scheduled tick was already claimed (by another instance)."""
        items, skipped = await self._select_process(request, trigger)
        return await self._start(
            "process",
            trigger,
            items,
            skipped,
            params=request.model_dump(mode="json"),
            max_concurrent=request.max_concurrent,
            timeout_seconds=request.timeout_seconds,
            schedule_name=schedule_name,
            scheduled_for=scheduled_for,
        )

    async def start_retry(
        self,
        request: RetryRequest,
        trigger: Trigger = Trigger.MANUAL,
        *,
        schedule_name: str | None = None,
        scheduled_for: datetime | None = None,
    ) -> Run | None:
        items, skipped = await self._select_retry(request)
        return await self._start(
            "retry",
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
    ) -> Run | None:
        if not self._accepting:
            raise StsyncError("the daemon is shutting down and accepts no new runs")
        run_id = uuid.uuid4()
        started_at = await self._pool.fetchval(
            QUERIES["insert_run"],
            run_id,
            action,
            trigger.value,
            schedule_name,
            scheduled_for,
            orjson.dumps(params),
            self._instance,
        )
        if started_at is None:
            return None  # this (schedule, fire time) is taken
        run = Run(
            id=run_id,
            action=action,
            trigger=trigger,
            schedule_name=schedule_name,
            items=items,
            skipped=skipped,
            max_concurrent=max_concurrent or self._settings.sync.max_concurrent,
            timeout_seconds=timeout_seconds or self._settings.sync.timeout_seconds,
            started_at=started_at,
        )
        self._runs[run_id] = run
        run.task = asyncio.create_task(self._execute(run), name=f"stsync-run-{run_id}")
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
            max_concurrent=run.max_concurrent,
        )
        return run

    def subscribe(self, run: Run) -> asyncio.Queue[Event | None]:
        """A queue of this run's events, ending with None after `run.finished`."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        queue.put_nowait(self._started_event(run))
        run.subscribers.append(queue)
        return queue

    def _started_event(self, run: Run) -> Event:
        return {
            "event": EVENT_RUN_STARTED,
            "run_id": str(run.id),
            "action": run.action,
            "total_credentials": run.total_credentials,
            "syncs": [
                {
                    "credential_id": str(item.credential.id),
                    "company": item.credential.company_name,
                    "environment": item.credential.environment.value,
                    "data_type": item.data_type.value,
                }
                for item in run.items
            ],
            "skipped": run.skipped,
        }

    async def _execute(self, run: Run) -> RunSummary:
        semaphore = asyncio.Semaphore(run.max_concurrent)
        clock0 = time.monotonic()
        try:
            for item in run.items:
                key = (item.credential.id, item.data_type)
                if key in run.tasks:
                    continue
                run.tasks[key] = asyncio.create_task(self._sync_one(run, item, semaphore))
            if run.tasks:
                await asyncio.wait(list(run.tasks.values()))
        except asyncio.CancelledError:
            run.cancel_status = run.cancel_status or SyncStatus.INTERRUPTED
            for task in run.tasks.values():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*run.tasks.values(), return_exceptions=True)
        status = (
            run.cancel_status.value
            if run.cancel_status is not None
            else ("failed" if run.unexpected else "completed")
        )
        summary = self._summary(run, status, time.monotonic() - clock0)
        try:
            await self._pool.execute(
                QUERIES["finish_run"], run.id, status, orjson.dumps(_summary_record(summary))
            )
        except DB_ERRORS as exc:
            log_event(
                logger,
                logging.ERROR,
                "run.unrecorded",
                run_id=run.id,
                error=describe_db_error(exc),
            )
        self._metrics.run_finished(run.action, run.trigger, status)
        log_event(
            logger,
            logging.INFO,
            "run.finished",
            run_id=run.id,
            action=run.action,
            status=status,
            successful=summary["successful_syncs"],
            failed=summary["failed_syncs"],
            records=summary["total_records_processed"],
            seconds=round(summary["execution_time_seconds"], 3),
        )
        run.publish({"event": EVENT_RUN_FINISHED, "summary": summary})
        for queue in run.subscribers:
            queue.put_nowait(None)
        self._runs.pop(run.id, None)
        return summary

    def _summary(self, run: Run, status: str, seconds: float) -> RunSummary:
        successful = sum(1 for s in run.results if s["status"] == SyncStatus.COMPLETED)
        failed_skips = [s for s in run.skipped if s["reason"].startswith("could not start")]
        return {
            "run_id": str(run.id),
            "action": run.action,
            "trigger": run.trigger.value,
            "status": status,
            "total_credentials": run.total_credentials,
            "total_syncs": len(run.results),
            "successful_syncs": successful,
            "failed_syncs": len(run.results) - successful + len(failed_skips),
            "total_records_processed": sum(s["records_processed"] for s in run.results),
            "execution_time_seconds": round(seconds, 3),
            "started_at": iso(run.started_at) or "",
            "completed_at": iso(datetime.now(UTC)) or "",
            "syncs": run.results,
            "skipped": run.skipped,
        }

    async def _sync_one(self, run: Run, item: WorkItem, semaphore: asyncio.Semaphore) -> None:
        credential = item.credential
        control = SyncControl()
        run.controls[(credential.id, item.data_type)] = control
        request = SyncRequest(
            credential=credential,
            data_type=item.data_type,
            mode=item.mode,
            trigger=item.trigger,
            run_id=run.id,
            retry_of=item.retry_of,
            attempt=item.attempt,
            timeout_seconds=run.timeout_seconds,
        )
        env, data_type = credential.environment, item.data_type
        started = False

        def on_progress(progress: SyncProgress) -> None:
            nonlocal started
            if not started:
                return
            run.publish(
                {
                    "event": EVENT_SYNC_PROGRESS,
                    "run_id": str(run.id),
                    "sync_id": str(progress.sync_id),
                    "credential_id": str(credential.id),
                    "company": credential.company_name,
                    "environment": env.value,
                    "data_type": data_type.value,
                    "records_processed": progress.records_processed,
                    "records_failed": progress.records_failed,
                    "pages": progress.pages,
                    "rate": round(progress.rate, 1),
                }
            )

        try:
            async with semaphore:
                if run.cancel_status is not None:
                    return
                self._metrics.sync_started(env, data_type)
                started = True
                run.publish(
                    {
                        "event": EVENT_SYNC_STARTED,
                        "run_id": str(run.id),
                        "credential_id": str(credential.id),
                        "company_id": credential.company_id,
                        "company": credential.company_name,
                        "environment": env.value,
                        "data_type": data_type.value,
                        "mode": item.mode.value,
                    }
                )
                result: SyncResult | None = None
                try:
                    result = await self._engine.synchronize(
                        request, progress=on_progress, control=control
                    )
                finally:
                    self._record(run, result, control, env, data_type)
        except SyncAlreadyRunning as exc:
            run.skipped.append(skipped_view(credential, data_type, str(exc)))
        except asyncio.CancelledError:
            raise
        except StsyncError as exc:
            run.skipped.append(skipped_view(credential, data_type, f"could not start: {exc}"))
        except Exception as exc:
            run.unexpected = True
            logger.critical("run.sync_crashed", exc_info=exc)
            run.skipped.append(
                skipped_view(credential, data_type, f"could not start: unexpected {exc!r}")
            )

    def _record(
        self,
        run: Run,
        result: SyncResult | None,
        control: SyncControl,
        env: Any,
        data_type: DataType,
    ) -> None:
        result = result or control.result
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
        if result.status is SyncStatus.COMPLETED and result.completed_at is not None:
            credential = result.request.credential
            self._metrics.last_success(
                str(credential.id),
                credential.company_id,
                credential.environment,
                data_type,
                result.completed_at,
            )
        view = sync_view_from_result(result, self._instance)
        run.results.append(view)
        run.publish({"event": EVENT_SYNC_FINISHED, "run_id": str(run.id), "sync": view})
        if result.error_category is ErrorCategory.UNEXPECTED and result.status is SyncStatus.FAILED:
            run.unexpected = True

    # -- cancellation and shutdown ------------------------------------------------------------

    def cancel(self, target: uuid.UUID) -> str:
        """Cancel a running run or sync of this instance; returns "run" or "sync"."""
        run = self._runs.get(target)
        if run is not None:
            self._cancel_run(run, SyncStatus.CANCELLED)
            return "run"
        for run in self._runs.values():
            for key, control in run.controls.items():
                if control.sync_id == target:
                    control.cancel_status = SyncStatus.CANCELLED
                    task = run.tasks.get(key)
                    if task is not None:
                        task.cancel()
                    return "sync"
        raise NotFoundError(f"no running run or sync with id {target}")

    def _cancel_run(self, run: Run, status: SyncStatus) -> None:
        run.cancel_status = status
        for key, task in run.tasks.items():
            control = run.controls.get(key)
            if control is not None:
                control.cancel_status = status
            task.cancel()

    def interrupt_all(self) -> None:
        """Cancel every running sync now, logged `interrupted` (a second stop signal)."""
        for run in list(self._runs.values()):
            self._cancel_run(run, SyncStatus.INTERRUPTED)

    async def shutdown(self, grace_seconds: float) -> None:
        """Stop taking runs, let running syncs finish for `grace_seconds`, then interrupt them."""
        self._accepting = False
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        if not tasks:
            return
        log_event(
            logger,
            logging.INFO,
            "daemon.draining",
            runs=len(tasks),
            syncs=self.running_syncs,
            grace_seconds=grace_seconds,
        )
        _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
        if pending:
            self.interrupt_all()
            await asyncio.wait(pending, timeout=10)


def _summary_record(summary: RunSummary) -> dict[str, Any]:
    """What the runs table keeps: the counts, not every sync (those are in the sync log)."""
    return {k: v for k, v in summary.items() if k not in ("syncs",)}
