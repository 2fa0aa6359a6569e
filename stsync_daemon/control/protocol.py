"""The control protocol shared by the daemon (server) and stsyncctl (client).

HTTP/1.1 over the Unix socket, every path under `/v1`; JSON in and out, so
`curl --unix-socket /run/stsync/control.sock http://localhost/v1/health` works for debugging.

Endpoints (answers are the TypedDicts below). Wherever an id is taken (in the path, or as
`credential_id` / `run_id`), a unique prefix of at least 4 hex digits will do, as with git: the
daemon resolves it; none matching is a 404 `not_found`, several a 400 `bad_request` saying how many.
- GET /v1/health -> Health
- GET /v1/status?company_id=&run_id=&environment=&data_type=&running_only=&failed_only=
  &last_24h=&since=&limit= -> {"syncs", "summary", "instances"}; failed_only: failed, timed_out and
  interrupted (what retry picks up); since: ISO 8601 with a zone
- GET /v1/syncs/{sync_id} -> SyncView (the whole error message)
- GET /v1/instances -> {"instances": [{"name", "host", "pid", "alive", "heartbeat_at", ...}]}
- POST /v1/process (ProcessRequest), POST /v1/retry (RetryRequest) -> NDJSON events, or a Plan when
  dry_run is set; a company_id or credential_id that matches no credential is a 404 `not_found`
- GET /v1/runs?limit=N -> {"runs": [RunView]}
- POST /v1/cancel/{run_or_sync_id} -> {"cancelled", "id"}
- GET /v1/schedules -> {"schedules": [ScheduleView]}; POST /v1/schedules/{name}/pause|resume ->
  ScheduleView (paused for every instance, persisted); GET /v1/report?hours=24 -> the report
- GET /v1/credentials?environment=&company_id=&status= -> {"credentials": [CredentialView]};
  POST /v1/credentials, GET|PATCH|DELETE /v1/credentials/{id},
  POST /v1/credentials/{id}/enable|disable|test -> CredentialView (test: {"ok", "message", ...};
  DELETE: {"removed": id})
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

from typing import Literal

from pydantic import BaseModel

# The requests and answers are the daemon's own vocabulary; the CLI reads them from here.
from ..requests import (
    CredentialAdd,
    CredentialsQuery,
    CredentialUpdate,
    DeadLettersQuery,
    ProcessRequest,
    RetryRequest,
    StatusQuery,
    id_ref,
)
from ..views import (
    EVENT_ERROR,
    EVENT_RUN_FINISHED,
    EVENT_RUN_STARTED,
    EVENT_SYNC_FINISHED,
    EVENT_SYNC_PROGRESS,
    EVENT_SYNC_STARTED,
    CredentialView,
    DeadLetters,
    DeadLetterView,
    Health,
    InstanceView,
    Plan,
    PlanItem,
    Report,
    ReportRow,
    RunSummary,
    RunView,
    ScheduleView,
    SkippedView,
    StatusSummary,
    SyncView,
)

__all__ = [
    "API_PREFIX",
    "EVENT_ERROR",
    "EVENT_RUN_FINISHED",
    "EVENT_RUN_STARTED",
    "EVENT_SYNC_FINISHED",
    "EVENT_SYNC_PROGRESS",
    "EVENT_SYNC_STARTED",
    "NDJSON",
    "CredentialAdd",
    "CredentialUpdate",
    "CredentialView",
    "CredentialsQuery",
    "DeadLetterView",
    "DeadLetters",
    "DeadLettersQuery",
    "ErrorBody",
    "Health",
    "InstanceView",
    "Plan",
    "PlanItem",
    "ProcessRequest",
    "Report",
    "ReportRow",
    "RetryRequest",
    "RunSummary",
    "RunView",
    "ScheduleView",
    "SkippedView",
    "StatusQuery",
    "StatusSummary",
    "SyncView",
    "id_ref",
]

API_PREFIX = "/v1"
NDJSON = "application/x-ndjson"


class ErrorBody(BaseModel):
    """Every error answer."""

    message: str
    code: Literal[
        "bad_request", "not_found", "conflict", "unavailable", "forbidden", "internal"
    ] = "bad_request"
