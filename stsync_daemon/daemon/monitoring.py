"""The metrics read from the database, kept current on every instance of a cluster.

Credentials by status, the scheduled credentials and their staleness, and (opt-in) the last success
of each scheduled credential are facts of the shared database, not of one daemon: every instance
re-reads them every `[metrics] refresh_seconds`, and at once when something here changed one (a
sync moved a credential in or out of `error`, an operator changed a credential). So a copy never
stays stale because another instance did the work, and alerts aggregate them with `max`.

Only what some enabled `process` schedule syncs counts as scheduled: a disabled credential, one
with scheduled syncs off, or one no schedule's filters reach never feeds a staleness alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from ..config import MetricsConfig, ScheduleConfig
from ..logs import log_event
from ..metrics import Metrics
from ..store.credentials import Coverage, CoverageRule, CredentialStore
from ..store.db import DB_ERRORS, describe_db_error

logger = logging.getLogger(__name__)


def coverage_of(schedules: Iterable[ScheduleConfig]) -> Coverage:
    """What the enabled `process` schedules sync (retries only redo failures; reports sync none)."""
    rules = tuple(
        CoverageRule(
            s.environment,
            s.company_id,
            str(s.credential_id) if s.credential_id else None,
            data_type,
        )
        for s in schedules
        if s.enabled and s.action == "process"
        for data_type in s.data_type.expand()
    )
    return Coverage(rules)


class MetricsRefresher:
    """Reads the cluster-wide gauges from PostgreSQL, periodically and when told they changed."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        credentials: CredentialStore,
        schedules: Iterable[ScheduleConfig],
        config: MetricsConfig,
    ) -> None:
        self._metrics = metrics
        self._credentials = credentials
        self._coverage = coverage_of(schedules)
        self._config = config
        self._wanted = asyncio.Event()

    def reschedule(self, schedules: Iterable[ScheduleConfig]) -> None:
        """New schedules (a reload): what counts as scheduled changes; refresh soon."""
        self._coverage = coverage_of(schedules)
        self.changed()

    def changed(self) -> None:
        """Something the gauges count changed: refresh now rather than at the next period."""
        self._wanted.set()

    async def refresh(self) -> None:
        """Read every cluster-wide gauge once, then publish them together (a scrape never sees
        half of one refresh); raises the database's errors."""
        store, coverage = self._credentials, self._coverage
        by_status = await store.count_by_status()
        scheduled = await store.scheduled_by_status(coverage)
        fresh = await store.freshness(coverage, self._config.stale_after_hours * 3600)
        last = await store.scheduled_last_success(coverage) if self._config.per_credential else None
        self._metrics.credentials_by_status(by_status)
        self._metrics.scheduled_by_status(
            {(r["environment"], r["status"]): r["n"] for r in scheduled}
        )
        self._metrics.freshness(
            (r["environment"], r["data_type"], r["stale"], r["oldest"]) for r in fresh
        )
        if last is not None:
            self._metrics.replace_last_success(
                (
                    str(r["credential_id"]),
                    r["company_id"],
                    r["environment"],
                    r["data_type"],
                    r["completed_at"],
                )
                for r in last
            )

    async def loop(self, beat: Callable[[], None]) -> None:
        """Refresh every `refresh_seconds`, or sooner when `changed`; an outage only skips rounds."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), self._config.refresh_seconds)
            self._wanted.clear()
            try:
                await self.refresh()
            except DB_ERRORS as exc:
                log_event(
                    logger, logging.WARNING, "metrics.refresh_failed", error=describe_db_error(exc)
                )
            beat()
