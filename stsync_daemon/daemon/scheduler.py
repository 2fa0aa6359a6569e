"""Cron schedules on APScheduler 3.x: each tick becomes one run, claimed once in the database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobSubmissionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING, STATE_STOPPED

from ..config import ScheduleConfig
from ..cron import CrontabTrigger, build_trigger, nominal_fire_time
from ..logs import log_event
from ..metrics import Metrics
from ..views import ScheduleView

logger = logging.getLogger(__name__)

Action = Callable[[ScheduleConfig, datetime], Awaitable[str]]
# How long past its misfire grace a tick may be overdue before the scheduler counts as stalled.
_STALL_SLACK_SECONDS = 60.0


class TickSkipped(Exception):
    """Raised by an action when its tick did not become a run; `reason` is a metrics label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _State:
    config: ScheduleConfig
    trigger: CrontabTrigger
    last_fire_at: datetime | None = None
    last_run_id: str | None = None
    running: bool = False
    runs: int = 0
    skips: int = 0
    misfires: int = 0


class Scheduler:
    """Owns the APScheduler instance; the action callback starts runs and says their id."""

    def __init__(
        self,
        schedules: tuple[ScheduleConfig, ...],
        action: Action,
        metrics: Metrics,
        *,
        misfire_grace_seconds: float,
    ) -> None:
        self._action = action
        self._metrics = metrics
        self._grace = misfire_grace_seconds
        self._states = {
            s.name: _State(s, build_trigger(s.cron, s.timezone)) for s in schedules if s.enabled
        }
        self._disabled = [s for s in schedules if not s.enabled]
        self._scheduler: AsyncIOScheduler | None = None
        self._stopping = False
        metrics.schedules_configured(self._states)

    def start(self) -> None:
        """Must run inside the event loop (APScheduler takes the running loop)."""
        scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(self._grace),
            },
        )
        for name, state in self._states.items():
            scheduler.add_job(self._fire, state.trigger, args=[name], id=name, name=name)
        scheduler.add_listener(self._on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        scheduler.start()
        self._scheduler = scheduler
        self._refresh_next_fire()

    def reload(self, schedules: tuple[ScheduleConfig, ...]) -> dict[str, list[str]]:
        """Apply a new set of schedules (SIGHUP): added ones start, removed ones stop, changed ones
        take their new trigger and filters. A tick in flight finishes as it began; APScheduler keeps
        counting it against its job, so a changed schedule still never overlaps itself."""
        wanted = {s.name: s for s in schedules if s.enabled}
        changes: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
        for name in list(self._states):
            if name not in wanted:
                del self._states[name]
                changes["removed"].append(name)
                if self._scheduler is not None and self._scheduler.get_job(name) is not None:
                    self._scheduler.remove_job(name)
        for name, config in wanted.items():
            state = self._states.get(name)
            if state is None:
                state = self._states[name] = _State(
                    config, build_trigger(config.cron, config.timezone)
                )
                changes["added"].append(name)
                if self._scheduler is not None:
                    self._scheduler.add_job(
                        self._fire, state.trigger, args=[name], id=name, name=name
                    )
            elif state.config != config:
                timing = (state.config.cron, state.config.timezone) != (
                    config.cron,
                    config.timezone,
                )
                state.config = config
                changes["changed"].append(name)
                if timing:
                    state.trigger = build_trigger(config.cron, config.timezone)
                    if self._scheduler is not None:
                        self._scheduler.reschedule_job(name, trigger=state.trigger)
        self._disabled = [s for s in schedules if not s.enabled]
        self._metrics.schedules_configured(self._states)
        self._refresh_next_fire()
        return changes

    def pause(self) -> None:
        self._stopping = True
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()

    def shutdown(self) -> None:
        self._stopping = True
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def check(self, now: datetime | None = None) -> None:
        """Raise when APScheduler no longer fires: stopped, paused, or a tick long overdue."""
        scheduler = self._scheduler
        if scheduler is None or self._stopping:
            return
        if scheduler.state != STATE_RUNNING:
            raise RuntimeError(f"APScheduler is not running (state {scheduler.state})")
        now = now or datetime.now(UTC)
        late = timedelta(seconds=self._grace + _STALL_SLACK_SECONDS)
        for job in scheduler.get_jobs():
            if job.next_run_time is not None and job.next_run_time < now - late:
                raise RuntimeError(
                    f"schedule {job.id} should have fired at {job.next_run_time.isoformat()}"
                )

    def revive(self) -> None:
        """After `check` failed: start, resume or wake APScheduler, whichever it needs."""
        scheduler = self._scheduler
        if scheduler is None or self._stopping:
            return
        if scheduler.state == STATE_STOPPED:
            self._scheduler = None
            self.start()
        elif scheduler.state == STATE_PAUSED:
            scheduler.resume()
        else:
            scheduler.wakeup()

    def _on_event(self, event: JobEvent | JobSubmissionEvent) -> None:
        # Called synchronously by APScheduler; never await here.
        state = self._states.get(str(event.job_id))
        if state is None:
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            state.skips += 1
            self._metrics.schedule_skipped(state.config.name, "still_running")
            log_event(
                logger,
                logging.WARNING,
                "schedule.skipped",
                schedule=state.config.name,
                reason="previous run still going",
            )
        elif event.code == EVENT_JOB_MISSED:
            state.misfires += 1
            self._metrics.schedule_misfired(state.config.name)
            log_event(logger, logging.WARNING, "schedule.misfired", schedule=state.config.name)
        self._refresh_next_fire()

    async def _fire(self, name: str) -> None:
        state = self._states[name]
        now = datetime.now(UTC)
        scheduled_for = nominal_fire_time(state.trigger, now, timedelta(seconds=self._grace + 1))
        self._refresh_next_fire()
        state.running = True
        try:
            run_id = await self._action(state.config, scheduled_for)
        except asyncio.CancelledError:
            raise
        except TickSkipped as exc:
            state.skips += 1
            self._metrics.schedule_skipped(name, exc.reason)
            return
        except Exception as exc:
            logger.critical("schedule.crashed", exc_info=exc)
            return
        finally:
            state.running = False
        state.runs += 1
        state.last_fire_at = scheduled_for
        state.last_run_id = run_id
        self._metrics.schedule_fired(name, scheduled_for)

    def _refresh_next_fire(self) -> None:
        if self._scheduler is None:
            return
        for name in self._states:
            job = self._scheduler.get_job(name)
            self._metrics.schedule_next_fire(name, job.next_run_time if job else None)

    def views(
        self,
        last_runs: dict[str, Any] | None = None,
        paused: dict[str, datetime] | None = None,
    ) -> list[ScheduleView]:
        """Each schedule with its fire times, for `stsyncctl schedules` and dry runs."""
        views: list[ScheduleView] = []
        last_runs = last_runs or {}
        paused = paused or {}
        for name, state in self._states.items():
            job = self._scheduler.get_job(name) if self._scheduler else None
            next_fire = job.next_run_time if job else None
            if next_fire is None and job is None:
                next_fire = state.trigger.get_next_fire_time(None, datetime.now(UTC))
            views.append(
                _view(state.config, next_fire, state, last_runs.get(name), paused.get(name))
            )
        for config in self._disabled:
            views.append(
                _view(config, None, None, last_runs.get(config.name), paused.get(config.name))
            )
        return views

    def knows(self, name: str) -> bool:
        """Whether `name` is a configured schedule (enabled or not)."""
        return name in self._states or any(c.name == name for c in self._disabled)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _view(
    config: ScheduleConfig,
    next_fire: datetime | None,
    state: _State | None,
    last_run: Any,
    paused_at: datetime | None,
) -> ScheduleView:
    filters: dict[str, object] = {
        key: value
        for key, value in config.model_dump(
            mode="json",
            exclude={"name", "cron", "timezone", "action", "enabled"},
        ).items()
        if value is not None
    }
    last_fire = state.last_fire_at if state and state.last_fire_at else None
    last_run_id = state.last_run_id if state else None
    if last_run is not None and (last_fire is None or last_run["scheduled_for"] > last_fire):
        last_fire, last_run_id = last_run["scheduled_for"], str(last_run["id"])
    return {
        "name": config.name,
        "cron": config.cron,
        "timezone": config.timezone,
        "action": config.action,
        "enabled": config.enabled,
        "paused": paused_at is not None,
        "paused_at": _iso(paused_at),
        "filters": filters,
        "next_fire_at": _iso(next_fire),
        "last_fire_at": _iso(last_fire),
        "last_run_id": last_run_id,
        "running": bool(state and state.running),
        "runs": state.runs if state else 0,
        "skips": state.skips if state else 0,
        "misfires": state.misfires if state else 0,
    }
