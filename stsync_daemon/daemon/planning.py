"""Planning a run: which (credential, data type) pairs a request selects, which it skips and why,
and what a dry run shows (with estimates from ServiceTitan when asked)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..config import Settings
from ..enums import CredentialStatus, DataType, ErrorCategory, SyncMode, Trigger
from ..errors import NotFoundError, StsyncError
from ..limits import EXPORT_PAGE_RECORDS
from ..requests import ProcessRequest, RetryRequest, is_whole_id
from ..servicetitan import ServiceTitanClient
from ..store.credentials import Credential, CredentialStore
from ..store.syncs import SyncStore
from ..views import Plan, PlanItem, ScheduleView, SkippedView, iso

Selection = tuple[list["WorkItem"], list[SkippedView]]


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


def _unschedulable(credential: Credential) -> str | None:
    """Why schedules leave a credential alone (manual runs may still name it), or None."""
    if credential.status is CredentialStatus.DISABLED:
        return "credential disabled"
    if credential.status is CredentialStatus.ERROR:
        return f"credential in error: {credential.last_error or 'fix and enable it'}"
    if not credential.schedule_enabled:
        return "scheduled syncs turned off for this credential"
    return None


def _nothing_matches(request: ProcessRequest, credential_id: uuid.UUID | None) -> str:
    """One line naming the filters that matched no credential."""
    named = []
    if credential_id is not None:
        named.append(f"--credential-id {credential_id}")
    if request.company_id:
        named.append(f"--company-id {request.company_id}")
    if request.environment:
        named.append(f"--environment {request.environment.value}")
    return f"no credential matches {' '.join(named)} (see `stsyncctl credentials list`)"


@dataclass(frozen=True)
class WorkItem:
    """One (credential, data type) a run will sync."""

    credential: Credential
    data_type: DataType
    mode: SyncMode
    trigger: Trigger
    retry_of: uuid.UUID | None = None
    attempt: int = 1


class Planner:
    """Turns requests into work items; reads only (the database, and ServiceTitan for estimates)."""

    def __init__(
        self,
        *,
        credentials: CredentialStore,
        syncs: SyncStore,
        client: ServiceTitanClient,
        settings: Settings,
    ) -> None:
        self._credentials = credentials
        self._syncs = syncs
        self._client = client
        self._settings = settings
        self.schedule_views: Callable[[], Awaitable[list[ScheduleView]]] | None = None

    async def select(
        self, request: ProcessRequest | RetryRequest, trigger: Trigger
    ) -> tuple[str, Selection]:
        """The run's action, its items and the pairs it leaves out."""
        if isinstance(request, ProcessRequest):
            return "process", await self._select_process(request, trigger)
        return "retry", await self._select_retry(request, trigger)

    async def _select_process(
        self, request: ProcessRequest, trigger: Trigger
    ) -> tuple[list[WorkItem], list[SkippedView]]:
        scheduled = trigger is Trigger.SCHEDULED
        credential_id = None
        if request.credential_id is not None:
            # A prefix is resolved (unique, or an error); a whole id is taken as it is.
            ref = request.credential_id
            credential_id = (
                uuid.UUID(ref) if is_whole_id(ref) else await self._credentials.resolve(ref)
            )
        found = await self._credentials.list(
            environment=request.environment,
            company_id=request.company_id,
            credential_id=credential_id,
        )
        if not found and not scheduled and (request.company_id or credential_id):
            # An operator (or cron) naming a company or credential that matches nothing has made
            # a mistake: say so rather than run nothing with success.
            raise NotFoundError(_nothing_matches(request, credential_id))
        mode = SyncMode.FULL if request.full else SyncMode.INCREMENTAL
        items: list[WorkItem] = []
        skipped: list[SkippedView] = []
        for credential in found:
            reason = _unschedulable(credential) if scheduled else None
            if reason is not None:
                pass
            elif credential.status is CredentialStatus.DISABLED and request.credential_id is None:
                reason = "credential disabled"
            elif credential.status is CredentialStatus.ERROR and not request.include_errored:
                reason = f"credential in error: {credential.last_error or 'fix and enable it'}"
            for data_type in request.data_type.expand():
                if reason:
                    skipped.append(skipped_view(credential, data_type, reason))
                else:
                    items.append(WorkItem(credential, data_type, mode, trigger))
        return items, skipped

    async def _select_retry(
        self, request: RetryRequest, trigger: Trigger = Trigger.MANUAL
    ) -> tuple[list[WorkItem], list[SkippedView]]:
        since = datetime.now(UTC) - timedelta(hours=request.max_age_hours)
        rows = await self._syncs.retry_candidates(since)
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
            else:
                reason = _unschedulable(credential) if trigger is Trigger.SCHEDULED else None
            if reason is None and credential.status is CredentialStatus.DISABLED:
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
        cursors = await self._syncs.cursors(ids)
        plan_items: list[PlanItem] = []
        estimates: list[asyncio.Task[tuple[int | None, str | None, float]]] = []
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
                    "last_success_at": iso(cursor["last_success_at"]) if cursor else None,
                    "estimated_records": None,
                    "estimate_error": None,
                    "estimated_seconds": None,
                    "retry_of": str(item.retry_of) if item.retry_of else None,
                    "attempt": item.attempt,
                }
            )
            if estimate:
                estimates.append(asyncio.create_task(self._estimate(item, since)))
        if estimates:
            for plan_item, (count, error, latency) in zip(
                plan_items, await asyncio.gather(*estimates), strict=True
            ):
                plan_item["estimated_records"] = count
                plan_item["estimate_error"] = error
                if count is None:
                    continue
                first = plan_item["resume_from"] == "beginning"
                threshold = self._settings.sync.backfill_min_records
                if first and 0 < threshold <= count:
                    plan_item["mode"] = "backfill"
                plan_item["estimated_seconds"] = round(
                    self._duration(plan_item["mode"], count, latency, first=first), 1
                )
        schedules: list[ScheduleView] = await self.schedule_views() if self.schedule_views else []
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
    ) -> tuple[int | None, str | None, float]:
        """The records to sync, and how long the asking took (the latency a sync would meet)."""
        try:
            access = await self._credentials.access(
                item.credential, self._settings.servicetitan.resolve_app_key()
            )
            tenant = self._client.tenant(access)
            clock = time.monotonic()
            count = await tenant.count_changed(item.data_type, since)
        except StsyncError as exc:
            return None, str(exc), 0.0
        return count, None, time.monotonic() - clock

    def _duration(self, mode: str, records: int, latency: float, *, first: bool) -> float:
        """Seconds a sync would take at `latency` per request: an export reads one page after the
        other; a backfill `backfill_concurrency` list pages at a time, under the tenant's rate."""
        sync = self._settings.sync
        count_request = latency if first and sync.backfill_min_records > 0 else 0.0
        if mode != "backfill":
            return count_request + max(1, math.ceil(records / EXPORT_PAGE_RECORDS)) * latency
        pages = math.ceil(records / sync.backfill_page_size)
        reading = max(
            math.ceil(pages / sync.backfill_concurrency) * latency,
            pages / self._settings.servicetitan.requests_per_second,
        )
        return count_request + reading + latency  # and the catch-up export's page

    async def plan_for(self, request: ProcessRequest | RetryRequest) -> Plan:
        """The dry run of a process or retry request."""
        action, (items, skipped) = await self.select(request, Trigger.MANUAL)
        estimate = isinstance(request, ProcessRequest) and request.estimate
        return await self.plan(action, items, skipped, estimate=estimate)
