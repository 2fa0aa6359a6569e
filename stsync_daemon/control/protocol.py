"""The control protocol shared by the daemon (server) and stsyncctl (client).

HTTP/1.1 over the Unix socket, every path under `/v1`; JSON in and out, so
`curl --unix-socket /run/stsync/control.sock http://localhost/v1/health` works for debugging.

Endpoints (answers are the TypedDicts below):
- GET /v1/health -> Health
- GET /v1/status?company_id=&running_only=&failed_only=&last_24h=&limit=
  -> {"syncs", "summary", "instances"}
- GET /v1/instances -> {"instances": [{"name", "host", "pid", "alive", "heartbeat_at", ...}]}
- POST /v1/process (ProcessRequest), POST /v1/retry (RetryRequest) -> NDJSON events, or a Plan when
  dry_run is set
- GET /v1/runs?limit=N -> {"runs": [RunView]}
- POST /v1/cancel/{run_or_sync_id} -> {"cancelled", "id"}
- GET /v1/schedules -> {"schedules": [ScheduleView]}; GET /v1/report?hours=24 -> the report
- GET|POST /v1/credentials, GET|PATCH|DELETE /v1/credentials/{id},
  POST /v1/credentials/{id}/enable|disable|test -> CredentialView (test: {"ok", "message", ...})
- GET /v1/dead-letters?credential_id=&company_id=&environment=&data_type=&include_resolved=&limit=
  -> DeadLetters: records that could not be stored, newest first

Streams are `application/x-ndjson`, one event per line, each with an `event` key: `run.started`
(run_id, total_credentials, syncs planned, skipped), `sync.started`, `sync.progress` (records,
pages, rate), `sync.finished` (a SyncView), `run.finished` (summary: a RunSummary). A client that
reads slower than the run progresses misses some `sync.progress` events (at most 1,000 events wait
for it), never the others; one that disconnects leaves the run going. Errors are
`{"message": ..., "code": ...}` with a 4xx/5xx status. Times are ISO 8601 UTC.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ..enums import DataType, DataTypeFilter, Environment
from ..limits import (
    BIGINT_MAX,
    DEAD_LETTERS_LIMIT_MAX,
    RETRY_MAX_AGE_HOURS_DEFAULT,
    RETRY_MAX_AGE_HOURS_MAX,
    RETRY_MAX_RETRIES_DEFAULT,
    STATUS_LIMIT_DEFAULT,
    STATUS_LIMIT_MAX,
    CompanyId,
    Concurrency,
    Seconds,
    Text,
)

API_PREFIX = "/v1"
NDJSON = "application/x-ndjson"


class _Request(BaseModel):
    # No infinities or NaN: JSON cannot carry them, and query strings must not smuggle them in.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class StatusQuery(_Request):
    """Filters of `stsyncctl status`."""

    company_id: CompanyId | None = None
    running_only: bool = False
    failed_only: bool = False
    last_24h: bool = False
    limit: Annotated[int, Field(ge=1, le=STATUS_LIMIT_MAX)] = STATUS_LIMIT_DEFAULT


class ProcessRequest(_Request):
    """`stsyncctl process`: run syncs now (or show the plan)."""

    environment: Environment | None = None
    company_id: CompanyId | None = None
    credential_id: uuid.UUID | None = None
    data_type: DataTypeFilter = DataTypeFilter.BOTH
    dry_run: bool = False
    estimate: bool = False
    max_concurrent: Concurrency | None = None
    timeout_seconds: Seconds | None = None
    full: bool = False
    # Manual runs include credentials in `error` (an operator may be checking a fix); scheduled not.
    include_errored: bool = True


class RetryRequest(_Request):
    """`stsyncctl retry`: re-run recent failed or timed-out syncs."""

    max_age_hours: Annotated[float, Field(gt=0, le=RETRY_MAX_AGE_HOURS_MAX)] = (
        RETRY_MAX_AGE_HOURS_DEFAULT
    )
    max_retries: Annotated[int, Field(ge=1)] = RETRY_MAX_RETRIES_DEFAULT
    exclude_auth_errors: bool = False
    dry_run: bool = False
    max_concurrent: Concurrency | None = None
    timeout_seconds: Seconds | None = None


class CredentialAdd(_Request):
    """`stsyncctl credentials add`; the secret travels only over the local socket."""

    company_id: Annotated[CompanyId, Field(min_length=1)]
    company_name: Annotated[Text, Field(min_length=1, max_length=500)]
    environment: Environment
    tenant_id: Annotated[int, Field(gt=0, le=BIGINT_MAX)]
    client_id: Annotated[Text, Field(min_length=1, max_length=500)]
    client_secret: SecretStr
    app_key: SecretStr | None = None
    schedule_enabled: bool = True


class CredentialUpdate(_Request):
    """`stsyncctl credentials update`: only what is given changes."""

    company_name: Annotated[Text, Field(min_length=1, max_length=500)] | None = None
    client_id: Annotated[Text, Field(min_length=1, max_length=500)] | None = None
    client_secret: SecretStr | None = None
    app_key: SecretStr | None = None
    clear_app_key: bool = False
    schedule_enabled: bool | None = None


class CredentialsQuery(_Request):
    """Filters of `GET /v1/credentials`."""

    environment: Environment | None = None
    company_id: CompanyId | None = None


class DeadLettersQuery(_Request):
    """Filters of `stsyncctl dead-letters`: open ones only unless `include_resolved`."""

    credential_id: uuid.UUID | None = None
    company_id: CompanyId | None = None
    environment: Environment | None = None
    data_type: DataType | None = None
    include_resolved: bool = False
    limit: Annotated[int, Field(ge=1, le=DEAD_LETTERS_LIMIT_MAX)] = STATUS_LIMIT_DEFAULT


class ErrorBody(BaseModel):
    """Every error answer."""

    message: str
    code: Literal[
        "bad_request", "not_found", "conflict", "unavailable", "forbidden", "internal"
    ] = "bad_request"


# Answers. TypedDicts rather than models: the server builds them from rows, the CLI reads them, and
# mypy checks both sides against the same keys.
from typing import TypedDict  # noqa: E402


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
    """One (credential, data type) a run would sync."""

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
    retry_of: str | None
    attempt: int


class ScheduleView(TypedDict):
    """A configured schedule and its fire times."""

    name: str
    cron: str
    timezone: str
    action: str
    enabled: bool
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
