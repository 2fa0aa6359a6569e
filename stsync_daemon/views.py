"""What the daemon answers: the JSON shapes of its views and run events (times ISO 8601 UTC).

TypedDicts rather than models: the store and the runner build them from rows and results, the CLI
reads them, and mypy checks both sides against the same keys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypedDict


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SyncView(TypedDict):
    """One sync log row; the `status --json-output` element and the `syncs` of a run summary."""

    id: str
    run_id: str | None
    company_id: str
    company: str
    credential_id: str
    environment: str
    tenant_id: int
    data_type: str
    status: str
    trigger: str
    mode: str
    started_at: str
    completed_at: str | None
    duration_seconds: float | None
    records_processed: int
    records_successful: int
    records_failed: int
    pages: int
    error_category: str | None
    error_message: str | None
    attempt: int
    retry_of: str | None
    instance: str | None


class StatusSummary(TypedDict):
    """Statistics over every sync matching the status filters (not only the listed ones)."""

    total_syncs: int
    by_status: dict[str, int]
    success_rate: float | None
    total_records_processed: int
    total_records_failed: int
    mean_duration_seconds: float | None
    dead_letters: int  # open (unresolved) ones, under the same company filter


class SkippedView(TypedDict):
    """A credential (and data type) a run left out, and why."""

    credential_id: str
    company_id: str
    company: str
    environment: str
    data_type: str
    reason: str


class RunSummary(TypedDict):
    """What `process` and `retry` return (the `run.finished` event's `summary`)."""

    run_id: str
    action: str
    trigger: str
    status: str
    total_credentials: int
    total_syncs: int
    successful_syncs: int
    failed_syncs: int
    total_records_processed: int
    execution_time_seconds: float
    started_at: str
    completed_at: str
    syncs: list[SyncView]
    skipped: list[SkippedView]


class PlanItem(TypedDict):
    """One (credential, data type) a run would sync; `mode` is `incremental`, `full` or, for a
    first or full sync of a tenant large enough (seen with --estimate), `backfill`."""

    credential_id: str
    company_id: str
    company: str
    environment: str
    tenant_id: int
    data_type: str
    mode: str
    resume_from: str
    cursor_modified_on: str | None
    last_success_at: str | None
    estimated_records: int | None
    estimate_error: str | None
    # How long the sync would take at the latency the estimate's request met (with --estimate).
    estimated_seconds: float | None
    retry_of: str | None
    attempt: int


class ScheduleView(TypedDict):
    """A configured schedule and its fire times."""

    name: str
    cron: str
    timezone: str
    action: str
    enabled: bool
    paused: bool  # by an operator (`stsyncctl schedules pause`), for every instance
    paused_at: str | None
    filters: dict[str, object]
    next_fire_at: str | None
    last_fire_at: str | None
    last_run_id: str | None
    running: bool
    runs: int
    skips: int
    misfires: int


class Plan(TypedDict):
    """A dry run's answer: nothing was written anywhere."""

    dry_run: bool
    action: str
    total_credentials: int
    items: list[PlanItem]
    skipped: list[SkippedView]
    schedules: list[ScheduleView]


class RunView(TypedDict):
    """One batch, running or finished."""

    id: str
    action: str
    trigger: str
    schedule_name: str | None
    scheduled_for: str | None
    status: str
    instance: str | None
    started_at: str
    completed_at: str | None
    total_syncs: int
    running_syncs: int
    successful_syncs: int
    failed_syncs: int
    records_processed: int


class InstanceView(TypedDict):
    """A daemon of the cluster (`stsyncctl status` lists them)."""

    name: str
    host: str
    pid: int
    version: str
    started_at: str | None
    heartbeat_at: str | None
    stopped_at: str | None
    alive: bool
    running_syncs: int


class CredentialView(TypedDict):
    """A credential without its secret."""

    id: str
    company_id: str
    company: str
    environment: str
    tenant_id: int
    client_id: str
    status: str
    last_error: str | None
    last_error_at: str | None
    schedule_enabled: bool
    has_app_key: bool
    created_at: str
    updated_at: str
    last_success: dict[str, str | None]


class DeadLetterView(TypedDict):
    """A record that could not be stored; `raw` is it as received (UTF-8, bad bytes escaped)."""

    id: int
    sync_id: str | None
    credential_id: str | None
    company_id: str | None  # None once its credential is removed
    company: str | None
    environment: str
    tenant_id: int
    data_type: str
    record_id: str | None
    reason: str
    raw: str
    created_at: str
    resolved_at: str | None  # when a later sync stored the record; None while open


class DeadLetters(TypedDict):
    """`GET /v1/dead-letters`: one page, and how many match in all."""

    dead_letters: list[DeadLetterView]
    total: int


class Health(TypedDict):
    """`GET /v1/health`: `status` is `ok`, `degraded` (works in part, recovers by itself) or
    `unhealthy` (a background loop failed for good: restart it); `problems` says why."""

    status: str
    version: str
    instance: str
    pid: int
    uptime_seconds: float
    database: str
    running_syncs: int
    running_runs: int
    problems: list[str]
    loops: dict[str, str]


class ReportRow(TypedDict):
    """One (company, environment, data type) over the report's window."""

    company_id: str
    company: str
    credential_id: str
    environment: str
    data_type: str
    syncs: int
    completed: int
    failed: int
    records_processed: int
    records_failed: int
    last_status: str | None
    last_success_at: str | None
    last_error: str | None


class Report(TypedDict):
    """The daily report (`stsyncctl report`, and the `report` schedule action)."""

    generated_at: str
    since: str
    hours: float
    rows: list[ReportRow]
    summary: StatusSummary


# NDJSON stream events (each also carries "event"):
#   run.started    {"run_id", "action", "total_credentials", "syncs": [{"credential_id", "company",
#                   "environment", "data_type"}], "skipped": [SkippedView]}
#   sync.started   {"run_id", "sync_id", "credential_id", "company_id", "company", "environment",
#                   "data_type", "mode"}
#   sync.progress  {"run_id", "sync_id", "credential_id", "company", "environment", "data_type",
#                   "records_processed", "records_failed", "pages", "rate"}
#   sync.finished  {"run_id", "sync": SyncView}
#   run.finished   {"summary": RunSummary}
#   error          {"message"}: the run itself broke (the daemon logged why)
EVENT_RUN_STARTED = "run.started"
EVENT_SYNC_STARTED = "sync.started"
EVENT_SYNC_PROGRESS = "sync.progress"
EVENT_SYNC_FINISHED = "sync.finished"
EVENT_RUN_FINISHED = "run.finished"
EVENT_ERROR = "error"
