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
from ..control.server import ControlServer, ControlServices
from ..enums import Trigger
from ..errors import NotFoundError, StsyncError
from ..logs import log_event
from ..metrics import Metrics
from ..metrics_server import start_metrics_server
from ..servicetitan import ServiceTitanClient
from ..store.credentials import Credential, CredentialStore
from ..store.crypto import SecretCipher
from ..store.db import DB_ERRORS, create_pool, describe_db_error, ping
from ..store.migrate import migrate_keeping_alive
from ..store.runs import RunStore
from ..store.syncs import SyncStore, sweep_orphans
from ..sync.engine import SyncEngine
from ..views import Health as HealthView
from ..views import ScheduleView
from .health import OK, Health
from .monitoring import MetricsRefresher
from .report import log_report
from .retention import Retention
from .runner import Runner
from .runs import TickNotClaimed
from .scheduler import Scheduler, TickSkipped
from .systemd import SystemdNotifier, watchdog_interval, watchdog_loop

logger = logging.getLogger(__name__)
_CHANNEL = "stsync_events"
_PROBE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *DB_ERRORS)


class Daemon:
    """Owns the pool, the ServiceTitan client, the runner, the scheduler and both servers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance = settings.cluster.instance_name()
        self.metrics = Metrics(per_credential=settings.metrics.per_credential)
        self.notifier = SystemdNotifier.from_environment()
        self.health = Health()
        self.started_monotonic = time.monotonic()
        self._tasks: list[asyncio.Task[Any]] = []
        self._metrics_runner: Any = None
        self._listener: asyncpg.Connection | None = None
        self.pool: asyncpg.Pool
        self.client: ServiceTitanClient
        self.credentials: CredentialStore
        self.runs: RunStore
        self.syncs: SyncStore
        self.runner: Runner
        self.scheduler: Scheduler
        self.control: ControlServer
        self.refresher: MetricsRefresher

    async def start(self) -> None:
        settings = self.settings
        self.pool = await create_pool(
            settings.database.dsn.get_secret_value(),
            min_size=settings.database.pool_min_size,
            max_size=settings.database.pool_max_size,
        )
        self.runs = RunStore(self.pool, self.instance)
        self.syncs = SyncStore(self.pool)
        async with self.pool.acquire() as conn:
            # A long migration must not hit TimeoutStartSec: ask systemd for 30 s more every 10 s.
            applied = await migrate_keeping_alive(conn, lambda: self.notifier.extend_timeout(30))
        if applied:
            log_event(
                logger, logging.INFO, "database.migrated", versions=[m.version for m in applied]
            )
        await self._claim_instance_name()
        await self._heartbeat()
        self.health.observe_database(self.metrics.database)
        self.health.database(True)
        cipher = (
            SecretCipher.from_file(settings.secrets.key_file) if settings.secrets.key_file else None
        )
        app_key = settings.servicetitan.resolve_app_key()
        self.client = ServiceTitanClient(settings.servicetitan, observer=self.metrics)
        await self.client.__aenter__()
        self.credentials = CredentialStore(self.pool, cipher)
        self.refresher = MetricsRefresher(
            metrics=self.metrics,
            credentials=self.credentials,
            schedules=settings.schedules,
            config=settings.metrics,
        )
        engine = SyncEngine(
            self.pool,
            self.client,
            self.credentials,
            app_key=app_key,
            commit_batch_records=settings.sync.commit_batch_records,
            instance=self.instance,
            problems=self.health.report,
            backfill_min_records=settings.sync.backfill_min_records,
            backfill_concurrency=settings.sync.backfill_concurrency,
            backfill_page_size=settings.sync.backfill_page_size,
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
            credential_status_changed=self.refresher.changed,
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
        self.runner.planner.schedule_views = self.schedule_views
        self.control = ControlServer(
            services=ControlServices(
                runner=self.runner,
                credentials=self.credentials,
                syncs=self.syncs,
                runs=self.runs,
                lease_seconds=settings.cluster.lease_seconds,
                health=self.health_document,
                schedules=self.schedule_views,
                pause_schedule=self.pause_schedule,
                resume_schedule=self.resume_schedule,
                credential_changed=self._credential_changed,
                check_credential=self._check_credential,
            ),
            socket_path=settings.control.socket_path(),
            socket_mode=settings.control.socket_mode,
            allowed_group=settings.control.allowed_group,
            admin_group=settings.control.admin_group,
        )
        await self.control.start()
        if settings.metrics.enabled:
            self._metrics_runner = await start_metrics_server(
                self.metrics, settings.metrics.host, settings.metrics.port, verdict=self.verdict
            )
        await self.refresher.refresh()
        await self.refresh_dead_letter_metrics()
        await self._listen()
        self.scheduler.start()
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "claims": lambda: self.runner.work_loop(beat=lambda: self.health.beat("claims")),
            "heartbeat": self._heartbeat_loop,
            "sweep": self._sweep_loop,
            "scheduler": self._scheduler_loop,
            "metrics": lambda: self.refresher.loop(beat=lambda: self.health.beat("metrics")),
            "retention": Retention(settings.retention, self.syncs, self.runs).loop,
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
            await self.refresher.refresh()

    async def _credential_changed(self, credential_id: uuid.UUID, removed: bool) -> None:
        if removed:
            self.metrics.forget_credential(str(credential_id))
        await self.refresh_credential_metrics()

    async def _check_credential(self, credential: Credential) -> None:
        access = await self.credentials.access(
            credential, self.settings.servicetitan.resolve_app_key()
        )
        await self.client.tenant(access).check()

    async def health_document(self) -> HealthView:
        """`stsyncctl health`: the database asked now, the loops as the board last saw them."""
        database_ok = await self.probe_database()
        status, problems = self.health.verdict(database_ok=database_ok)
        return {
            "status": status,
            "version": __version__,
            "instance": self.instance,
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
            "database": "ok" if database_ok else "unavailable",
            "running_syncs": self.runner.running_syncs,
            "running_runs": self.runner.running_runs,
            "problems": problems,
            "loops": {name: loop.state for name, loop in sorted(self.health.loops.items())},
        }

    async def refresh_dead_letter_metrics(self) -> None:
        self.metrics.open_dead_letters(await self.syncs.open_dead_letters_by_kind())

    async def schedule_views(self) -> list[ScheduleView]:
        return self.scheduler.views(
            await self.runs.last_of_schedules(), await self.runs.paused_schedules()
        )

    async def pause_schedule(self, name: str, by: str | None) -> ScheduleView:
        """Skip the schedule's ticks on every instance until it is resumed."""
        self._known_schedule(name)
        await self.runs.pause_schedule(name, by)
        log_event(logger, logging.INFO, "schedule.paused", schedule=name, by=by)
        return await self._schedule_view(name)

    async def resume_schedule(self, name: str) -> ScheduleView:
        self._known_schedule(name)
        if await self.runs.resume_schedule(name):
            log_event(logger, logging.INFO, "schedule.resumed", schedule=name)
        return await self._schedule_view(name)

    def _known_schedule(self, name: str) -> None:
        if not self.scheduler.knows(name):
            raise NotFoundError(f"no schedule named {name!r} (`stsyncctl schedules` lists them)")

    async def _schedule_view(self, name: str) -> ScheduleView:
        return next(v for v in await self.schedule_views() if v["name"] == name)

    async def reload(self, settings: Settings) -> None:
        """SIGHUP: take the new schedules now; other settings need a restart (logged, not applied).
        Runs in flight are not touched."""
        changes = self.scheduler.reload(settings.schedules)
        self.refresher.reschedule(settings.schedules)
        restart = sorted(
            section
            for section in type(settings).model_fields
            if section != "schedules"
            and getattr(settings, section) != getattr(self.settings, section)
        )
        self.settings = self.settings.model_copy(update={"schedules": settings.schedules})
        log_event(
            logger,
            logging.WARNING if restart else logging.INFO,
            "daemon.reloaded",
            schedules=len(settings.schedules),
            restart_needed=restart or None,
            **changes,
        )

    async def _fire(self, schedule: ScheduleConfig, scheduled_for: datetime) -> str:
        """A tick: claim it, run it to the end, return the run id (None: claimed elsewhere)."""
        if await self.runs.schedule_paused(schedule.name):
            log_event(
                logger,
                logging.INFO,
                "schedule.skipped",
                schedule=schedule.name,
                scheduled_for=scheduled_for,
                reason="paused by an operator (stsyncctl schedules resume NAME)",
            )
            raise TickSkipped("paused")
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
        request = schedule.request()
        assert request is not None  # the report action never gets here
        run = await self.runner.start(
            request, Trigger.SCHEDULED, schedule_name=schedule.name, scheduled_for=scheduled_for
        )
        if run.task is not None:
            # The run belongs to the runner: cancelling the tick must not cancel the run.
            await asyncio.shield(run.task)
        return str(run.id)

    async def _report(self, schedule: ScheduleConfig, scheduled_for: datetime) -> str:
        run_id = uuid.uuid4()
        claimed = await self.runs.create_plain_run(
            run_id,
            action="report",
            trigger=Trigger.SCHEDULED.value,
            schedule_name=schedule.name,
            scheduled_for=scheduled_for,
            params=b"{}",
        )
        if claimed is None:
            raise TickNotClaimed("claimed_elsewhere")
        log_report(await self.syncs.report(schedule.max_age_hours))
        await self.runs.finish_run(run_id, "completed", None)
        return str(run_id)

    async def _claim_instance_name(self) -> None:
        """Refuse to start under a name a live daemon on this host already uses."""
        row = await self.runs.registration()
        if row is None or row["stopped_at"] is not None or row["host"] != socket.gethostname():
            return
        if row["pid"] != os.getpid() and _pid_alive(row["pid"]):
            raise StsyncError(
                f"instance name {self.instance!r} is in use by process {row['pid']} on this host: "
                "stop it, or give this daemon its own [cluster] instance name"
            )

    async def _heartbeat(self) -> None:
        await self.runs.heartbeat(__version__)

    async def _notify(self, payload: str) -> None:
        await self.runs.notify(_CHANNEL, payload)

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
            await asyncio.wait_for(ping(self.pool), 5)
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
        if hasattr(self, "runs"):
            with contextlib.suppress(*DB_ERRORS):
                await self.runs.stopped()
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
