"""Rows and results turned into the control protocol's JSON shapes (ISO 8601 UTC times)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from ..control.protocol import (
    CredentialView,
    DeadLetterView,
    SkippedView,
    StatusSummary,
    SyncView,
)
from ..enums import DataType
from ..store.credentials import Credential
from ..sync.engine import SyncResult


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def sync_view_from_row(row: asyncpg.Record) -> SyncView:
    """A sync log row joined with its credential and company."""
    started, completed = row["started_at"], row["completed_at"]
    return {
        "id": str(row["id"]),
        "run_id": _str(row["run_id"]),
        "company_id": row["company_id"],
        "company": row["company_name"],
        "credential_id": str(row["credential_id"]),
        "environment": row["environment"],
        "tenant_id": row["tenant_id"],
        "data_type": row["data_type"],
        "status": row["status"],
        "trigger": row["trigger"],
        "mode": row["mode"],
        "started_at": iso(started) or "",
        "completed_at": iso(completed),
        "duration_seconds": (completed - started).total_seconds() if completed else None,
        "records_processed": row["records_processed"],
        "records_successful": row["records_successful"],
        "records_failed": row["records_failed"],
        "pages": row["pages"],
        "error_category": row["error_category"],
        "error_message": row["error_message"],
        "attempt": row["attempt"],
        "retry_of": _str(row["retry_of"]),
        "instance": row["instance"],
    }


def sync_view_from_result(result: SyncResult, instance: str | None) -> SyncView:
    """A finished sync as the engine returned it."""
    request, credential = result.request, result.request.credential
    return {
        "id": str(result.sync_id),
        "run_id": _str(request.run_id),
        "company_id": credential.company_id,
        "company": credential.company_name,
        "credential_id": str(credential.id),
        "environment": credential.environment.value,
        "tenant_id": credential.tenant_id,
        "data_type": request.data_type.value,
        "status": result.status.value,
        "trigger": request.trigger.value,
        "mode": request.mode.value,
        "started_at": iso(result.started_at) or "",
        "completed_at": iso(result.completed_at),
        "duration_seconds": result.duration_seconds if result.completed_at else None,
        "records_processed": result.records_processed,
        "records_successful": result.records_successful,
        "records_failed": result.records_failed,
        "pages": result.pages,
        "error_category": result.error_category.value if result.error_category else None,
        "error_message": result.error_message,
        "attempt": request.attempt,
        "retry_of": _str(request.retry_of),
        "instance": instance,
    }


def skipped_view(credential: Credential, data_type: DataType | str, reason: str) -> SkippedView:
    """A pair left out of a run."""
    return {
        "credential_id": str(credential.id),
        "company_id": credential.company_id,
        "company": credential.company_name,
        "environment": credential.environment.value,
        "data_type": str(data_type),
        "reason": reason,
    }


def credential_view(
    credential: Credential, last_success: dict[str, datetime | None] | None = None
) -> CredentialView:
    """A credential without any secret."""
    last = last_success or {}
    return {
        "id": str(credential.id),
        "company_id": credential.company_id,
        "company": credential.company_name,
        "environment": credential.environment.value,
        "tenant_id": credential.tenant_id,
        "client_id": credential.client_id,
        "status": credential.status.value,
        "last_error": credential.last_error,
        "last_error_at": iso(credential.last_error_at),
        "schedule_enabled": credential.schedule_enabled,
        "has_app_key": credential.has_app_key,
        "created_at": iso(credential.created_at) or "",
        "updated_at": iso(credential.updated_at) or "",
        "last_success": {dt.value: iso(last.get(dt.value)) for dt in DataType},
    }


def summarize(stats: list[asyncpg.Record], *, dead_letters: int) -> StatusSummary:
    """Statistics from `summarize_syncs` rows, and the count of open dead letters."""
    by_status = {r["status"]: r["n"] for r in stats}
    total = sum(by_status.values())
    finished = total - by_status.get("running", 0)
    durations = [(r["mean_seconds"], r["n"]) for r in stats if r["mean_seconds"] is not None]
    weight = sum(n for _, n in durations)
    return {
        "total_syncs": total,
        "by_status": by_status,
        "success_rate": round(by_status.get("completed", 0) / finished, 4) if finished else None,
        "total_records_processed": int(sum(r["records"] or 0 for r in stats)),
        "total_records_failed": int(sum(r["failed_records"] or 0 for r in stats)),
        "mean_duration_seconds": (
            round(float(sum(float(m) * n for m, n in durations)) / weight, 3) if weight else None
        ),
        "dead_letters": dead_letters,
    }


def dead_letter_view(row: asyncpg.Record) -> DeadLetterView:
    """A `select_dead_letters` row; the raw bytes as text, anything not UTF-8 escaped (`\\xff`)."""
    raw: bytes | None = row["raw"]
    return {
        "id": row["id"],
        "sync_id": _str(row["sync_id"]),
        "credential_id": _str(row["credential_id"]),
        "company_id": row["company_id"],
        "company": row["company_name"],
        "environment": row["environment"],
        "tenant_id": row["tenant_id"],
        "data_type": row["data_type"],
        "record_id": row["record_id"],
        "reason": row["reason"],
        "raw": raw.decode("utf-8", errors="backslashreplace") if raw is not None else "",
        "created_at": iso(row["created_at"]) or "",
        "resolved_at": iso(row["resolved_at"]),
    }
