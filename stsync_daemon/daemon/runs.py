"""A run as this instance holds it: the batch it supervises, the syncs it runs, and their events.

Events are what `stsyncctl process` streams (see `views.py` for their shapes): `run.started` when a
client subscribes, then `sync.started`, `sync.progress`, `sync.finished` and `run.finished`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..enums import DataType, SyncStatus, Trigger
from ..store.credentials import Credential
from ..sync.engine import SyncControl, SyncProgress
from ..views import EVENT_RUN_STARTED, EVENT_SYNC_PROGRESS, RunSummary, SkippedView
from .events import EventQueue
from .planning import WorkItem
from .scheduler import TickSkipped

Event = dict[str, Any]


class TickNotClaimed(TickSkipped):
    """A tick another instance ran (`claimed_elsewhere`) or whose schedule still runs."""


@dataclass
class Run:
    """A batch this instance created and supervises."""

    id: uuid.UUID
    action: str
    trigger: Trigger
    schedule_name: str | None
    items: list[WorkItem]
    skipped: list[SkippedView]
    timeout_seconds: float
    started_at: datetime
    task: asyncio.Task[RunSummary] | None = None
    subscribers: list[EventQueue] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_status: SyncStatus | None = None
    stop_waiting: bool = False

    @property
    def total_credentials(self) -> int:
        return len({item.credential.id for item in self.items})

    def publish(self, event: Event) -> None:
        # Never blocks: a subscriber that falls behind loses progress events, nothing else.
        for queue in self.subscribers:
            queue.put_nowait(event)


@dataclass
class LocalSync:
    """A claimed item running in this instance."""

    run_id: uuid.UUID
    sync_id: uuid.UUID
    control: SyncControl
    task: asyncio.Task[None] | None = None
    # A task cancelled before its first step never runs its cleanup (slot, item, bookkeeping):
    # one not started yet is told to stop instead, and does so through that cleanup.
    started: bool = False
    stop_before_start: bool = False

    def stop(self, status: SyncStatus) -> None:
        """Cancel it (or, not started yet, have it end at once); `status` says why."""
        if self.stop_before_start or (self.task is not None and self.task.cancelling()):
            return  # once is enough: a second cancel would cut its cleanup short
        self.control.cancel_status = status
        if not self.started:
            self.stop_before_start = True
        elif self.task is not None:
            self.task.cancel()


def started_event(run: Run) -> Event:
    return {
        "event": EVENT_RUN_STARTED,
        "run_id": str(run.id),
        "action": run.action,
        "total_credentials": run.total_credentials,
        "syncs": [
            {
                "credential_id": str(item.credential.id),
                "company": item.credential.company_name,
                "environment": item.credential.environment.value,
                "data_type": item.data_type.value,
            }
            for item in run.items
        ],
        "skipped": run.skipped,
    }


def sync_event(
    kind: str,
    run_id: uuid.UUID,
    credential: Credential,
    data_type: DataType,
    **extra: Any,
) -> Event:
    return {
        "event": kind,
        "run_id": str(run_id),
        "credential_id": str(credential.id),
        "company_id": credential.company_id,
        "company": credential.company_name,
        "environment": credential.environment.value,
        "data_type": data_type.value,
        **extra,
    }


def progress_publisher(
    run: Run | None, credential: Credential, data_type: DataType
) -> Callable[[SyncProgress], None] | None:
    if run is None:
        return None

    def publish(progress: SyncProgress) -> None:
        run.publish(
            sync_event(
                EVENT_SYNC_PROGRESS,
                run.id,
                credential,
                data_type,
                sync_id=str(progress.sync_id),
                records_processed=progress.records_processed,
                records_failed=progress.records_failed,
                pages=progress.pages,
                rate=round(progress.rate, 1),
            )
        )

    return publish
