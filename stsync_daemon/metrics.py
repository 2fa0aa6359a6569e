"""Prometheus metrics of the daemon, on a private registry, named by Prometheus' conventions.

Every label comes from a closed vocabulary (enums.py) or the configured schedules, so the number of
series stays bounded; the only per-credential family (last success) is opt-in. Children of closed
label sets are created at 0 up front, so that `rate()` and absence alerts work from the first scrape.

Gauges read from the database (credentials, staleness, dead letters) are cluster-wide: every
instance exports the same values, so dashboards and alerts aggregate them with `max`, never `sum`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Mapping
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from . import __version__
from .enums import CredentialStatus, DataType, Environment, ErrorCategory, SyncStatus, Trigger

RECORD_OUTCOMES = ("successful", "failed")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "429", "error")
RATE_LIMIT_REASONS = ("proactive", "429")
TOKEN_OUTCOMES = ("ok", "error")
SKIP_REASONS = ("still_running", "claimed_elsewhere", "paused")
RUN_ACTIONS = ("process", "retry", "report")
RUN_STATUSES = ("completed", "failed", "cancelled")
FINISHED_SYNC_STATUSES = tuple(s for s in SyncStatus if s is not SyncStatus.RUNNING)

# Syncs last from seconds (nothing changed) to hours (a first full export of a big tenant).
SYNC_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
API_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# Free-form labels (endpoint, retry reason) are chosen by code, not by data; this cap is a guard
# against a caller passing a URL or an id by mistake and growing series without bound.
MAX_FREE_LABEL_VALUES = 50
OVERFLOW_LABEL_VALUE = "other"


def status_class(status: int | None) -> str:
    """The `status_class` label of an HTTP status (None means the request got no response)."""
    if status is None:
        return "error"
    if status == 429:
        return "429"
    if 200 <= status <= 599:
        return f"{status // 100}xx"
    return "error"


# (credential_id, company_id, environment, data_type, completed_at)
LastSuccess = tuple[str, str, str, str, datetime]
# (environment, data_type, stale pairs, oldest last success)
Freshness = tuple[str, str, int, datetime]


def _timestamp(at: datetime) -> float:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("metric timestamps must be timezone-aware datetimes")
    return at.timestamp()


class Metrics:
    """Every metric of stsync, and the methods the runner, scheduler and API client report through.

    Also satisfies the ServiceTitan client's observer protocol (`request_finished`,
    `rate_limit_waited`, `token_refreshed`, `retried`).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str = __version__,
        per_credential: bool = False,
    ) -> None:
        if registry is None:
            registry = CollectorRegistry()
            # Own registry: add the process_* and python_info series a default registry would have.
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.registry = registry
        self._free_labels: dict[str, set[str]] = {}
        # credential_id -> (environment, data_type) -> label values of its last-success child.
        self._last_success_keys: dict[str, dict[tuple[str, str], tuple[str, ...]]] = {}
        self._schedules: set[str] = set()

        r = registry
        self.syncs = Counter(
            "stsync_syncs",
            "Syncs finished, by final status.",
            ["environment", "data_type", "status"],
            registry=r,
        )
        self.sync_failures = Counter(
            "stsync_sync_failures",
            "Syncs that ended in error, by error category.",
            ["environment", "data_type", "category"],
            registry=r,
        )
        self.sync_duration = Histogram(
            "stsync_sync_duration_seconds",
            "Wall-clock duration of finished syncs.",
            ["environment", "data_type"],
            buckets=SYNC_DURATION_BUCKETS,
            registry=r,
        )
        self.records = Counter(
            "stsync_records",
            "Records processed by syncs, by outcome.",
            ["environment", "data_type", "outcome"],
            registry=r,
        )
        self.syncs_running = Gauge(
            "stsync_syncs_running",
            "Syncs in progress.",
            ["environment", "data_type"],
            registry=r,
        )
        # One series per scheduled credential and data type: only when [metrics] per_credential.
        self.last_success_timestamp = (
            Gauge(
                "stsync_last_success_timestamp_seconds",
                "Unix time of the last successful sync of a scheduled credential and data type.",
                ["credential_id", "company_id", "environment", "data_type"],
                registry=r,
            )
            if per_credential
            else None
        )
        self.credentials = Gauge(
            "stsync_credentials",
            "Registered credentials, by status (cluster-wide).",
            ["status"],
            registry=r,
        )
        self.scheduled_credentials = Gauge(
            "stsync_scheduled_credentials",
            "Credentials some enabled schedule syncs, by status (cluster-wide).",
            ["environment", "status"],
            registry=r,
        )
        self.stale_credentials = Gauge(
            "stsync_stale_credentials",
            "Scheduled credentials whose data type had no successful sync for "
            "[metrics] stale_after_hours (cluster-wide).",
            ["environment", "data_type"],
            registry=r,
        )
        self.oldest_success_timestamp = Gauge(
            "stsync_oldest_success_timestamp_seconds",
            "Unix time of the least recent last success among scheduled credentials (one that "
            "never succeeded counts from when it was added; cluster-wide).",
            ["environment", "data_type"],
            registry=r,
        )
        self.database_up = Gauge(
            "stsync_database_up",
            "1 when PostgreSQL answered this instance's last query or heartbeat, else 0.",
            registry=r,
        )
        self.dead_letters = Gauge(
            "stsync_dead_letters",
            "Records that could not be stored and are not resolved yet (stsyncctl dead-letters).",
            ["environment", "data_type"],
            registry=r,
        )
        for env, data_type in itertools.product(Environment, DataType):
            self.dead_letters.labels(env, data_type).set(0)
        self.api_requests = Counter(
            "stsync_api_requests",
            "ServiceTitan API requests, by response status class (error: no response).",
            ["environment", "endpoint", "status_class"],
            registry=r,
        )
        self.api_request_duration = Histogram(
            "stsync_api_request_duration_seconds",
            "Duration of ServiceTitan API requests.",
            ["environment", "endpoint"],
            buckets=API_DURATION_BUCKETS,
            registry=r,
        )
        self.rate_limit_waits = Counter(
            "stsync_rate_limit_waits",
            "Times a request waited for the rate limit (proactive: our limiter; 429: told to).",
            ["environment", "reason"],
            registry=r,
        )
        self.rate_limit_wait_seconds = Counter(
            "stsync_rate_limit_wait_seconds",
            "Time spent waiting for the rate limit.",
            ["environment", "reason"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "stsync_token_refreshes",
            "OAuth access token refreshes, by outcome.",
            ["environment", "outcome"],
            registry=r,
        )
        self.api_retries = Counter(
            "stsync_api_retries",
            "ServiceTitan API requests retried, by reason.",
            ["environment", "reason"],
            registry=r,
        )
        self.schedule_runs = Counter(
            "stsync_schedule_runs",
            "Schedule ticks that started a run.",
            ["schedule"],
            registry=r,
        )
        self.schedule_skips = Counter(
            "stsync_schedule_skips",
            "Schedule ticks skipped (still_running: previous run going; claimed_elsewhere: "
            "another daemon took the tick).",
            ["schedule", "reason"],
            registry=r,
        )
        self.schedule_misfires = Counter(
            "stsync_schedule_misfires",
            "Schedule ticks missed by more than the misfire grace time.",
            ["schedule"],
            registry=r,
        )
        self.schedule_next_fire_timestamp = Gauge(
            "stsync_schedule_next_fire_timestamp_seconds",
            "Unix time a schedule fires next.",
            ["schedule"],
            registry=r,
        )
        self.schedule_last_fire_timestamp = Gauge(
            "stsync_schedule_last_fire_timestamp_seconds",
            "Unix time a schedule last fired.",
            ["schedule"],
            registry=r,
        )
        self.runs = Counter(
            "stsync_runs",
            "Batch runs finished, by action, trigger and status.",
            ["action", "trigger", "status"],
            registry=r,
        )
        self.build_info = Gauge(
            "stsync_build_info", "Always 1; the version of stsync running.", ["version"], registry=r
        )
        self.build_info.labels(version).set(1)
        self._precreate()

    def _precreate(self) -> None:
        for env, dt in itertools.product(Environment, DataType):
            for status in FINISHED_SYNC_STATUSES:
                self.syncs.labels(env, dt, status)
            for category in ErrorCategory:
                self.sync_failures.labels(env, dt, category)
            for outcome in RECORD_OUTCOMES:
                self.records.labels(env, dt, outcome)
            self.sync_duration.labels(env, dt)
            self.syncs_running.labels(env, dt)
        for env in Environment:
            for reason in RATE_LIMIT_REASONS:
                self.rate_limit_waits.labels(env, reason)
                self.rate_limit_wait_seconds.labels(env, reason)
            for outcome in TOKEN_OUTCOMES:
                self.token_refreshes.labels(env, outcome)
        for cred_status in CredentialStatus:
            self.credentials.labels(cred_status)
        for env, cred_status in itertools.product(Environment, CredentialStatus):
            if cred_status is not CredentialStatus.DISABLED:  # a disabled one is never scheduled
                self.scheduled_credentials.labels(env, cred_status)
        for env, dt in itertools.product(Environment, DataType):
            self.stale_credentials.labels(env, dt)
        for action, trigger, run_status in itertools.product(RUN_ACTIONS, Trigger, RUN_STATUSES):
            self.runs.labels(action, trigger, run_status)

    def _bounded(self, label: str, value: str) -> str:
        seen = self._free_labels.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) >= MAX_FREE_LABEL_VALUES:
            return OVERFLOW_LABEL_VALUE
        seen.add(value)
        return value

    def render(self) -> bytes:
        """The exposition text of every metric (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)

    # -- syncs ---------------------------------------------------------------------------------

    def sync_started(self, environment: Environment, data_type: DataType) -> None:
        """A sync began; pair with `sync_finished`."""
        self.syncs_running.labels(environment, data_type).inc()

    def sync_finished(
        self,
        environment: Environment,
        data_type: DataType,
        status: SyncStatus,
        category: ErrorCategory | None,
        seconds: float,
        successful: int,
        failed: int,
    ) -> None:
        """A sync ended: its status, error category (None unless it failed), time and records."""
        self.syncs_running.labels(environment, data_type).dec()
        self.syncs.labels(environment, data_type, status).inc()
        if category is not None:
            self.sync_failures.labels(environment, data_type, category).inc()
        self.sync_duration.labels(environment, data_type).observe(max(seconds, 0.0))
        self.records.labels(environment, data_type, "successful").inc(max(successful, 0))
        self.records.labels(environment, data_type, "failed").inc(max(failed, 0))

    def last_success(
        self,
        credential_id: str,
        company_id: str,
        environment: Environment,
        data_type: DataType,
        at: datetime,
    ) -> None:
        """Record when a credential's data type last synced successfully (per_credential only)."""
        if self.last_success_timestamp is None:
            return
        labels = (str(credential_id), str(company_id), str(environment), str(data_type))
        keys = self._last_success_keys.setdefault(labels[0], {})
        previous = keys.get((labels[2], labels[3]))
        if previous is not None and previous != labels:
            self.last_success_timestamp.remove(
                *previous
            )  # the company id of the credential changed
        keys[(labels[2], labels[3])] = labels
        self.last_success_timestamp.labels(*labels).set(_timestamp(at))

    def forget_credential(self, credential_id: str) -> None:
        """Drop the series of a removed credential, so it stops feeding staleness alerts."""
        if self.last_success_timestamp is None:
            return
        for labels in self._last_success_keys.pop(str(credential_id), {}).values():
            self.last_success_timestamp.remove(*labels)

    def replace_last_success(self, rows: Iterable[LastSuccess]) -> None:
        """Exactly these series from now on: the database's truth, scheduled pairs only."""
        if self.last_success_timestamp is None:
            return
        wanted: dict[str, dict[tuple[str, str], tuple[str, ...]]] = {}
        for credential_id, company_id, environment, data_type, at in rows:
            labels: tuple[str, ...] = (
                str(credential_id),
                str(company_id),
                str(environment),
                str(data_type),
            )
            wanted.setdefault(labels[0], {})[(labels[2], labels[3])] = labels
            self.last_success_timestamp.labels(*labels).set(_timestamp(at))
        for credential_id, keys in self._last_success_keys.items():
            for key, labels in keys.items():
                if wanted.get(credential_id, {}).get(key) != labels:
                    self.last_success_timestamp.remove(*labels)
        self._last_success_keys = wanted

    def scheduled_by_status(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Scheduled credentials per (environment, status); missing pairs become 0."""
        for env, cred_status in itertools.product(Environment, CredentialStatus):
            if cred_status is not CredentialStatus.DISABLED:
                self.scheduled_credentials.labels(env, cred_status).set(
                    counts.get((env.value, cred_status.value), 0)
                )

    def freshness(self, rows: Iterable[Freshness]) -> None:
        """Stale counts and oldest success per (environment, data type); missing ones: 0, none."""
        seen: dict[tuple[str, str], tuple[int, datetime]] = {
            (str(env), str(dt)): (stale, oldest) for env, dt, stale, oldest in rows
        }
        for env, dt in itertools.product(Environment, DataType):
            found = seen.get((env.value, dt.value))
            self.stale_credentials.labels(env, dt).set(found[0] if found else 0)
            if found is None:
                with contextlib.suppress(KeyError):
                    self.oldest_success_timestamp.remove(env, dt)
            else:
                self.oldest_success_timestamp.labels(env, dt).set(_timestamp(found[1]))

    def database(self, up: bool) -> None:
        """Whether this instance reaches PostgreSQL (stsync_database_up)."""
        self.database_up.set(1 if up else 0)

    def open_dead_letters(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set the open dead letters per (environment, data type); missing pairs become 0."""
        for env, data_type in itertools.product(Environment, DataType):
            self.dead_letters.labels(env, data_type).set(
                counts.get((env.value, data_type.value), 0)
            )

    def credentials_by_status(self, counts: Mapping[CredentialStatus, int]) -> None:
        """Set the number of credentials per status; statuses missing from `counts` become 0."""
        for cred_status in CredentialStatus:
            self.credentials.labels(cred_status).set(counts.get(cred_status, 0))

    # -- schedules and runs ----------------------------------------------------------------------

    def schedules_configured(self, names: Iterable[str]) -> None:
        """Create a schedule's series at 0 so alerts see it before its first tick."""
        for name in names:
            self._schedules.add(name)
            self.schedule_runs.labels(name)
            self.schedule_misfires.labels(name)
            for reason in SKIP_REASONS:
                self.schedule_skips.labels(name, reason)

    def schedule_fired(self, schedule: str, at: datetime) -> None:
        """A tick of `schedule` started a run."""
        self.schedule_runs.labels(schedule).inc()
        self.schedule_last_fire_timestamp.labels(schedule).set(_timestamp(at))

    def schedule_skipped(self, schedule: str, reason: str) -> None:
        """A tick was skipped: `still_running`, `claimed_elsewhere` or `paused`."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.schedule_skips.labels(schedule, reason).inc()

    def schedule_misfired(self, schedule: str) -> None:
        """A tick came later than the misfire grace time and did not run."""
        self.schedule_misfires.labels(schedule).inc()

    def schedule_next_fire(self, schedule: str, at: datetime | None) -> None:
        """When `schedule` fires next; None (paused or finished) removes the series."""
        if at is None:
            with contextlib.suppress(KeyError):
                self.schedule_next_fire_timestamp.remove(schedule)
            return
        self.schedule_next_fire_timestamp.labels(schedule).set(_timestamp(at))

    def run_finished(self, action: str, trigger: Trigger, status: str) -> None:
        """A batch run ended; `status` is completed, failed or cancelled."""
        self.runs.labels(action, trigger, status).inc()

    # -- ServiceTitan client observer ------------------------------------------------------------

    def request_finished(
        self, environment: Environment, endpoint: str, status: int | None, seconds: float
    ) -> None:
        """An API request ended; `status` None means no response (network error or timeout)."""
        endpoint = self._bounded("endpoint", endpoint)
        self.api_requests.labels(environment, endpoint, status_class(status)).inc()
        self.api_request_duration.labels(environment, endpoint).observe(max(seconds, 0.0))

    def rate_limit_waited(self, environment: Environment, seconds: float, reason: str) -> None:
        """A request waited for the rate limit; `reason` is "proactive" or "429"."""
        reason = self._bounded("rate_limit_reason", reason)
        self.rate_limit_waits.labels(environment, reason).inc()
        self.rate_limit_wait_seconds.labels(environment, reason).inc(max(seconds, 0.0))

    def token_refreshed(self, environment: Environment, outcome: str) -> None:
        """An access token refresh ended: "ok" or "error"."""
        self.token_refreshes.labels(environment, self._bounded("token_outcome", outcome)).inc()

    def retried(self, environment: Environment, reason: str) -> None:
        """The client is about to retry a request for `reason`."""
        self.api_retries.labels(environment, self._bounded("retry_reason", reason)).inc()
