"""Runs, their items and claims, and the instances that run them: the cluster's shared state.

A run is a batch of (credential, data type) items. Any instance may claim items of any running run
(`FOR UPDATE SKIP LOCKED`); the run's owner supervises and finalises it. A scheduled tick becomes
a run once across all instances (`create_run` with a schedule). Instances heartbeat so the others
can tell a dead owner from a busy one.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from ..views import InstanceView, RunView, iso
from .sql import load, resolve_id

_SQL = load("runs.sql")


@dataclass(frozen=True)
class NewItem:
    """One (credential, data type) a run will sync, in run order."""

    credential_id: uuid.UUID
    data_type: str
    mode: str
    trigger: str
    retry_of: uuid.UUID | None = None
    attempt: int = 1


@dataclass(frozen=True)
class RunHeader:
    """What a run's summary needs of the run itself."""

    action: str
    trigger: str
    started_at: datetime


NotClaimed = Literal["claimed_elsewhere", "still_running"]


class RunStore:
    """Every statement about runs, items, claims and instances, for one instance (`instance`)."""

    def __init__(self, pool: asyncpg.Pool, instance: str) -> None:
        self._pool = pool
        self.instance = instance

    # -- runs ------------------------------------------------------------------------------

    async def create_run(
        self,
        run_id: uuid.UUID,
        *,
        action: str,
        trigger: str,
        params: bytes,
        max_concurrent: int,
        timeout_seconds: float,
        items: Sequence[NewItem],
        schedule: tuple[str, datetime] | None = None,
    ) -> datetime | NotClaimed:
        """A run and its items in one transaction; its start time, or why a tick was not claimed."""
        async with self._pool.acquire() as conn, conn.transaction():
            if schedule is not None:
                name, scheduled_for = schedule
                started_at = await conn.fetchval(
                    _SQL["claim_tick"],
                    run_id,
                    action,
                    trigger,
                    name,
                    scheduled_for,
                    params,
                    self.instance,
                    max_concurrent,
                    timeout_seconds,
                )
                if started_at is None:
                    taken = await conn.fetchval(_SQL["tick_taken"], name, scheduled_for)
                    return "claimed_elsewhere" if taken else "still_running"
            else:
                started_at = await conn.fetchval(
                    _SQL["insert_manual_run"],
                    run_id,
                    action,
                    trigger,
                    params,
                    self.instance,
                    max_concurrent,
                    timeout_seconds,
                )
            if items:
                await conn.execute(
                    _SQL["insert_run_items"],
                    run_id,
                    list(range(len(items))),
                    [i.credential_id for i in items],
                    [i.data_type for i in items],
                    [i.mode for i in items],
                    [i.trigger for i in items],
                    [i.retry_of for i in items],
                    [i.attempt for i in items],
                )
        assert isinstance(started_at, datetime)
        return started_at

    async def create_plain_run(
        self,
        run_id: uuid.UUID,
        *,
        action: str,
        trigger: str,
        schedule_name: str | None,
        scheduled_for: datetime | None,
        params: bytes,
    ) -> datetime | None:
        """A run that is no batch of syncs (the report); None when that tick exists already."""
        started: datetime | None = await self._pool.fetchval(
            _SQL["insert_run"],
            run_id,
            action,
            trigger,
            schedule_name,
            scheduled_for,
            params,
            self.instance,
        )
        return started

    async def resolve(self, ref: str) -> uuid.UUID:
        """The run a whole id or a unique prefix of one stands for."""
        return await resolve_id(self._pool, _SQL["resolve_run_id"], ref, "run")

    async def resolve_run_or_sync(self, ref: str) -> uuid.UUID:
        """The run or sync a whole id or a unique prefix of one stands for (what `cancel` takes)."""
        return await resolve_id(
            self._pool, _SQL["resolve_run_or_sync_id"], ref, "run or sync", "runs or syncs"
        )

    async def finish_run(self, run_id: uuid.UUID, status: str, summary: bytes | None) -> None:
        await self._pool.execute(_SQL["finish_run"], run_id, status, summary)

    async def header(self, run_id: uuid.UUID) -> RunHeader | None:
        row = await self._pool.fetchrow(_SQL["run_header"], run_id)
        return None if row is None else RunHeader(row["action"], row["trigger"], row["started_at"])

    async def status(self, run_id: uuid.UUID) -> str | None:
        """A run's status, None when there is no such run."""
        row = await self._pool.fetchrow(_SQL["run_status"], run_id)
        return None if row is None else str(row["status"])

    async def own_running(self) -> list[uuid.UUID]:
        return [r["id"] for r in await self._pool.fetch(_SQL["own_running_runs"], self.instance)]

    async def recent(self, limit: int) -> list[RunView]:
        """The newest runs with their syncs' counts."""
        return [
            {
                "id": str(r["id"]),
                "action": r["action"],
                "trigger": r["trigger"],
                "schedule_name": r["schedule_name"],
                "scheduled_for": iso(r["scheduled_for"]),
                "status": r["status"],
                "instance": r["instance"],
                "started_at": iso(r["started_at"]) or "",
                "completed_at": iso(r["completed_at"]),
                "total_syncs": r["total_syncs"],
                "running_syncs": r["running_syncs"],
                "successful_syncs": r["successful_syncs"],
                "failed_syncs": r["failed_syncs"],
                "records_processed": r["records_processed"],
            }
            for r in await self._pool.fetch(_SQL["select_runs"], limit)
        ]

    async def last_of_schedules(self) -> dict[str, asyncpg.Record]:
        rows = await self._pool.fetch(_SQL["last_schedule_runs"])
        return {r["schedule_name"]: r for r in rows}

    # -- schedules -------------------------------------------------------------------------

    async def pause_schedule(self, name: str, by: str | None) -> None:
        await self._pool.execute(_SQL["pause_schedule"], name, by)

    async def resume_schedule(self, name: str) -> bool:
        """False when the schedule was not paused."""
        return await self._pool.fetchval(_SQL["resume_schedule"], name) is not None

    async def paused_schedules(self) -> dict[str, datetime]:
        """Paused schedules and when they were paused."""
        rows = await self._pool.fetch(_SQL["paused_schedules"])
        return {r["name"]: r["paused_at"] for r in rows}

    async def schedule_paused(self, name: str) -> bool:
        return bool(await self._pool.fetchval(_SQL["schedule_paused"], name))

    # -- items and claims ------------------------------------------------------------------

    async def with_pending_items(self) -> list[tuple[uuid.UUID, int, float]]:
        """Running runs with items to claim, oldest first: (id, max_concurrent, timeout)."""
        rows = await self._pool.fetch(_SQL["runs_with_pending_items"])
        return [(r["id"], r["max_concurrent"], r["timeout_seconds"]) for r in rows]

    async def claim_items(self, run_id: uuid.UUID, slots: int) -> list[asyncpg.Record]:
        """Up to `slots` pending items of a run, each with its credential's columns."""
        return await self._pool.fetch(_SQL["claim_items"], run_id, self.instance, slots)

    async def unclaim_item(
        self, run_id: uuid.UUID, credential_id: uuid.UUID, data_type: str
    ) -> None:
        await self._pool.execute(_SQL["unclaim_item"], run_id, credential_id, data_type)

    async def finish_item(
        self, run_id: uuid.UUID, credential_id: uuid.UUID, data_type: str, outcome: str | None
    ) -> None:
        await self._pool.execute(_SQL["finish_item"], run_id, credential_id, data_type, outcome)

    async def release_stale_claims(
        self, running: Sequence[uuid.UUID], older_than_seconds: float
    ) -> int:
        """Claims of this instance that never became a sync: pending again; how many."""
        rows = await self._pool.fetch(
            _SQL["release_stale_claims"], self.instance, list(running), older_than_seconds
        )
        return len(rows)

    async def cancel_pending_items(self, run_id: uuid.UUID, reason: str) -> None:
        await self._pool.execute(_SQL["cancel_pending_items"], run_id, reason)

    async def progress(self, run_id: uuid.UUID) -> tuple[int, int]:
        """(open items, all items) of a run."""
        row = await self._pool.fetchrow(_SQL["run_progress"], run_id)
        return (row["open"], row["total"]) if row is not None else (0, 0)

    async def credentials_count(self, run_id: uuid.UUID) -> int:
        return int(await self._pool.fetchval(_SQL["run_credentials"], run_id) or 0)

    async def item_outcomes(self, run_id: uuid.UUID) -> list[asyncpg.Record]:
        """Items that ended without a sync of their own (skipped, cancelled), in run order."""
        return await self._pool.fetch(_SQL["run_item_outcomes"], run_id)

    async def prune(self, before: datetime, limit: int) -> int:
        """Retention: up to `limit` finished runs started before `before`; how many went."""
        return int(await self._pool.fetchval(_SQL["prune_runs"], before, limit))

    # -- failover --------------------------------------------------------------------------

    async def settle_orphaned_items(self, lease_seconds: float) -> set[uuid.UUID]:
        """Claimed items whose sync ended or whose claimer is gone: done. Their runs' ids."""
        rows = await self._pool.fetch(_SQL["settle_orphaned_items"], lease_seconds)
        return {r["run_id"] for r in rows}

    async def orphaned_runs(self, lease_seconds: float) -> list[uuid.UUID]:
        return [r["id"] for r in await self._pool.fetch(_SQL["orphaned_runs"], lease_seconds)]

    # -- instances -------------------------------------------------------------------------

    async def heartbeat(self, version: str) -> None:
        await self._pool.execute(
            _SQL["heartbeat"], self.instance, socket.gethostname(), os.getpid(), version
        )

    async def stopped(self) -> None:
        await self._pool.execute(_SQL["instance_stopped"], self.instance)

    async def registration(self) -> asyncpg.Record | None:
        """This instance's row: host, pid, heartbeat_at, stopped_at."""
        return await self._pool.fetchrow(_SQL["select_instance"], self.instance)

    async def instances(self, lease_seconds: float) -> list[InstanceView]:
        """Instances seen in the last day; alive when they beat within `lease_seconds`."""
        return [
            {
                "name": r["name"],
                "host": r["host"],
                "pid": r["pid"],
                "version": r["version"],
                "started_at": iso(r["started_at"]),
                "heartbeat_at": iso(r["heartbeat_at"]),
                "stopped_at": iso(r["stopped_at"]),
                "alive": r["alive"],
                "running_syncs": r["running_syncs"],
            }
            for r in await self._pool.fetch(_SQL["select_instances"], lease_seconds)
        ]

    async def notify(self, channel: str, payload: str) -> None:
        """Tell every instance's listener (see `daemon/app.py`)."""
        await self._pool.execute(_SQL["notify"], channel, payload)
