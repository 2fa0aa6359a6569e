"""The daemon's life cycle: start every part in order, serve, then drain and stop in reverse.

Start-up: migrations, orphaned syncs marked `interrupted`, control socket and metrics bound, the
scheduler started, then READY=1. Stop: no new ticks or runs, running syncs get a grace period, then
are interrupted (their cursors are consistent by construction), then everything closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from .. import __version__
from ..config import ScheduleConfig, Settings
from ..control.protocol import ProcessRequest, RetryRequest, ScheduleView
from ..control.server import ControlServer
from ..enums import DataType, Trigger
from ..errors import StsyncError
from ..logs import log_event
from ..metrics import Metrics
from ..metrics_server import start_metrics_server
from ..servicetitan import ServiceTitanClient
from ..store.credentials import CredentialStore
from ..store.crypto import SecretCipher
from ..store.db import DB_ERRORS, create_pool, describe_db_error
from ..store.migrate import migrate_keeping_alive
from ..store.sql import QUERIES
from ..sync.engine import SyncEngine, sweep_orphans
from .health import OK, Health
from .report import build_report, log_report
from .runner import Runner, TickNotClaimed
from .scheduler import Scheduler
from .systemd import SystemdNotifier, watchdog_interval, watchdog_loop

logger = logging.getLogger(__name__)
_CHANNEL = "stsync_events"
_PROBE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *DB_ERRORS)


class Daemon:
    """Owns the pool, the ServiceTitan client, the runner, the scheduler and both servers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance = settings.cluster.instance_name()
        self.metrics = Metrics()
        self.notifier = SystemdNotifier.from_environment()
        self.health = Health()
        self.started_monotonic = time.monotonic()
        self._tasks: list[asyncio.Task[Any]] = []
        self._metrics_runner: Any = None
        self._listener: asyncpg.Connection | None = None
        self.pool: asyncpg.Pool
        self.client: ServiceTitanClient
        self.credentials: CredentialStore
        self.runner: Runner
        self.scheduler: Scheduler
        self.control: ControlServer

    async def start(self) -> None:
        settings = self.settings
        self.pool = await create_pool(
            settings.database.dsn.get_secret_value(),
            min_size=settings.database.pool_min_size,
            max_size=settings.database.pool_max_size,
        )
        async with self.pool.acquire() as conn:
            # A long migration must not hit TimeoutStartSec: ask systemd for 30 s more every 10 s.
            applied = await migrate_keeping_alive(conn, lambda: self.notifier.extend_timeout(30))
        if applied:
            log_event(
                logger, logging.INFO, "database.migrated", versions=[m.version for m in applied]
            )
        await self._claim_instance_name()
        await self._heartbeat()
        cipher = (
            SecretCipher.from_file(settings.secrets.key_file) if settings.secrets.key_file else None
        )
        app_key = settings.servicetitan.resolve_app_key()
        self.client = ServiceTitanClient(settings.servicetitan, observer=self.metrics)
        await self.client.__aenter__()
        self.credentials = CredentialStore(self.pool, cipher)
        engine = SyncEngine(
            self.pool,
            self.client,
            self.credentials,
            app_key=app_key,
            commit_batch_records=settings.sync.commit_batch_records,
            instance=self.instance,
            problems=self.health.report,
        )
        self.runner = Runner(
            pool=self.pool,
            engine=engine,
            credentials=self.credentials,
            client=self.client,
            settings=settings,
            metrics=self.metrics,
            instance=self.instance,
            notify=self._notify,
        )
        swept = await sweep_orphans(self.pool)
        if swept:
            log_event(logger, logging.WARNING, "sync.orphans_interrupted", syncs=len(swept))
        await self.runner.recover()
        await self.runner.sweep(self.settings.cluster.lease_seconds)
        self.scheduler = Scheduler(
            settings.schedules,
            self._fire,
            self.metrics,
            misfire_grace_seconds=settings.scheduler.misfire_grace_seconds,
        )
        self.runner.schedule_views = self.scheduler.views
        self.control = ControlServer(
            daemon=self,
            socket_path=settings.control.socket_path(),
            socket_mode=settings.control.socket_mode,
            allowed_group=settings.control.allowed_group,
        )
        await self.control.start()
        if settings.metrics.enabled:
            self._metrics_runner = await start_metrics_server(
                self.metrics, settings.metrics.host, settings.metrics.port, verdict=self.verdict
            )
        await self.refresh_credential_metrics()
        await self.refresh_dead_letter_metrics()
        for row in await self.pool.fetch(QUERIES["all_last_success"]):
            self.metrics.last_success(
                str(row["credential_id"]),
                row["company_id"],
                row["environment"],
                DataType(row["data_type"]),
                row["completed_at"],
            )
        await self._listen()
        self.scheduler.start()
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "claims": lambda: self.runner.work_loop(beat=lambda: self.health.beat("claims")),
            "heartbeat": self._heartbeat_loop,
            "sweep": self._sweep_loop,
            "scheduler": self._scheduler_loop,
        }
        for name, body in loops.items():
            self._tasks.append(
                asyncio.create_task(self.health.supervise(name, body), name=f"stsync-{name}")
            )
        interval = watchdog_interval()
        if interval:
            self._tasks.append(
                asyncio.create_task(
                    watchdog_loop(self.notifier, interval, alive=lambda: self.health.alive),
                    name="stsync-watchdog",
                )
            )
        # Everything alive now lives as long as the daemon: keep it out of every GC pass.
        gc.collect()
        gc.freeze()
        self.notifier.ready(status="idle")
        log_event(
            logger,
            logging.INFO,
            "daemon.ready",
            version=__version__,
            instance=self.instance,
            socket=str(self.control.path),
            metrics=self.metrics_address,
            schedules=len(settings.schedules),
        )

    @property
    def metrics_address(self) -> str | None:
        """host:port actually bound (useful when the configured port is 0)."""
        if self._metrics_runner is None:
            return None
        host, port = self._metrics_runner.addresses[0][:2]
        return f"{host}:{port}"

    async def refresh_credential_metrics(self) -> None:
        with contextlib.suppress(*DB_ERRORS):
            self.metrics.credentials_by_status(await self.credentials.count_by_status())

    async def refresh_dead_letter_metrics(self) -> None:
        rows = await self.pool.fetch(QUERIES["open_dead_letters_by_kind"])
        self.metrics.open_dead_letters({(r["environment"], r["data_type"]): r["n"] for r in rows})

    async def schedule_views(self) -> list[ScheduleView]:
        last = {r["schedule_name"]: r for r in await self.pool.fetch(QUERIES["last_schedule_runs"])}
        return self.scheduler.views(last)

    async def _fire(self, schedule: ScheduleConfig, scheduled_for: datetime) -> str:
        """A tick: claim it, run it to the end, return the run id (None: claimed elsewhere)."""
        log_event(
            logger,
            logging.INFO,
            "schedule.fired",
            schedule=schedule.name,
            action=schedule.action,
            scheduled_for=scheduled_for,
        )
        if schedule.action == "report":
            return await self._report(schedule, scheduled_for)
        try:
            return await self._start_scheduled(schedule, scheduled_for)
        except TickNotClaimed as exc:
            log_event(
                logger,
                logging.INFO,
                "schedule.not_claimed",
                schedule=schedule.name,
                reason=exc.reason,
            )
            raise

    async def _start_scheduled(self, schedule: ScheduleConfig, scheduled_for: datetime) -> str:
        if schedule.action == "retry":
            run = await self.runner.start(
                RetryRequest(
                    max_age_hours=schedule.max_age_hours,
                    max_retries=schedule.max_retries,
                    exclude_auth_errors=schedule.exclude_auth_errors,
                    max_concurrent=schedule.max_concurrent,
                    timeout_seconds=schedule.timeout_seconds,
                ),
                Trigger.SCHEDULED,
                schedule_name=schedule.name,
                scheduled_for=scheduled_for,
            )
        else:
            run = await self.runner.start(
                ProcessRequest(
                    environment=schedule.environment,
                    company_id=schedule.company_id,
                    credential_id=schedule.credential_id,
                    data_type=schedule.data_type,
                    max_concurrent=schedule.max_concurrent,
                    timeout_seconds=schedule.timeout_seconds,
                    full=schedule.full,
                    include_errored=False,
                ),
                Trigger.SCHEDULED,
                schedule_name=schedule.name,
                scheduled_for=scheduled_for,
            )
        if run.task is not None:
            # The run belongs to the runner: cancelling the tick must not cancel the run.
            await asyncio.shield(run.task)
        return str(run.id)

    async def _report(self, schedule: ScheduleConfig, scheduled_for: datetime) -> str:
        run_id = uuid.uuid4()
        claimed = await self.pool.fetchval(
            QUERIES["insert_run"],
            run_id,
            "report",
            Trigger.SCHEDULED.value,
            schedule.name,
            scheduled_for,
            b"{}",
            self.instance,
        )
        if claimed is None:
            raise TickNotClaimed("claimed_elsewhere")
        report = await build_report(self.pool, schedule.max_age_hours)
        log_report(report)
        await self.pool.execute(QUERIES["finish_run"], run_id, "completed", None)
        return str(run_id)

    async def _claim_instance_name(self) -> None:
        """Refuse to start under a name a live daemon on this host already uses."""
        row = await self.pool.fetchrow(QUERIES["select_instance"], self.instance)
        if row is None or row["stopped_at"] is not None or row["host"] != socket.gethostname():
            return
        if row["pid"] != os.getpid() and _pid_alive(row["pid"]):
            raise StsyncError(
                f"instance name {self.instance!r} is in use by process {row['pid']} on this host: "
                "stop it, or give this daemon its own [cluster] instance name"
            )

    async def _heartbeat(self) -> None:
        await self.pool.execute(
            QUERIES["heartbeat"], self.instance, socket.gethostname(), os.getpid(), __version__
        )

    async def _notify(self, payload: str) -> None:
        await self.pool.execute("SELECT pg_notify($1, $2)", _CHANNEL, payload)

    async def _listen(self) -> None:
        """A dedicated connection hears the other instances (new work, finished items, cancels)."""
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(self.settings.database.dsn.get_secret_value())

        def on_message(_conn: Any, _pid: int, _channel: str, payload: object) -> None:
            self.runner.on_notification(str(payload))

        await self._listener.add_listener(_CHANNEL, on_message)

    def verdict(self) -> tuple[str, list[str]]:
        """The daemon's health as the heartbeat last saw the database: for /healthz."""
        return self.health.verdict()

    async def probe_database(self) -> bool:
        """Ask PostgreSQL now (bounded), and remember the answer."""
        try:
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), 5)
        except _PROBE_ERRORS as exc:
            self.health.database(False, describe_db_error(exc))
        else:
            self.health.database(True)
        return self.health.database_ok

    async def _heartbeat_loop(self) -> None:
        """Heartbeat (other instances see us alive), the LISTEN connection, systemd STATUS=."""
        every = min(5.0, self.settings.cluster.lease_seconds / 3)
        while True:
            status, reasons = self.health.verdict()
            line = self.runner.describe_running()
            self.notifier.status(line if status == OK else f"{status}: {reasons[0]}; {line}")
            try:
                await self._heartbeat()
                await self._listen()
            except DB_ERRORS as exc:
                self.health.database(False, describe_db_error(exc))
            else:
                self.health.database(True)
            self.health.beat("heartbeat")
            await asyncio.sleep(every)

    async def _sweep_loop(self) -> None:
        """Take over dead instances' work; settle what an outage left half done."""
        while True:
            await asyncio.sleep(self.settings.cluster.orphan_sweep_seconds)
            try:
                swept = await sweep_orphans(self.pool)
                if swept:
                    log_event(logger, logging.WARNING, "sync.orphans_interrupted", syncs=len(swept))
                await self.runner.sweep(self.settings.cluster.lease_seconds)
                await self.runner.release_stale_claims()
                await self.refresh_dead_letter_metrics()
            except DB_ERRORS as exc:
                log_event(
                    logger, logging.WARNING, "housekeeping.failed", error=describe_db_error(exc)
                )
            self.health.beat("sweep")

    async def _scheduler_loop(self) -> None:
        """APScheduler runs its own timers: check they still fire, and revive it if not."""
        self.scheduler.revive()
        while True:
            self.scheduler.check()
            self.health.beat("scheduler")
            await asyncio.sleep(5.0)

    async def stop(self, *, grace_seconds: float | None = None) -> None:
        """Drain, then close everything; safe after a partial start."""
        self.notifier.stopping()
        log_event(logger, logging.INFO, "daemon.stopping", instance=self.instance)
        if hasattr(self, "scheduler"):
            self.scheduler.pause()
        if hasattr(self, "runner"):
            grace = (
                self.settings.sync.shutdown_grace_seconds
                if grace_seconds is None
                else grace_seconds
            )
            await self.runner.shutdown(grace)
        if hasattr(self, "scheduler"):
            self.scheduler.shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if hasattr(self, "control"):
            await self.control.stop()
        if self._listener is not None:
            with contextlib.suppress(*DB_ERRORS):
                await self._listener.close()
        if hasattr(self, "pool"):
            with contextlib.suppress(*DB_ERRORS):
                await self.pool.execute(QUERIES["instance_stopped"], self.instance)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if hasattr(self, "client"):
            await self.client.close()
        if hasattr(self, "pool"):
            try:
                await asyncio.wait_for(self.pool.close(), 10)
            except TimeoutError:
                log_event(logger, logging.WARNING, "database.close_timeout")
                self.pool.terminate()
        log_event(logger, logging.INFO, "daemon.stopped", instance=self.instance)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
