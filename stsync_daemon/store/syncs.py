"""The sync log, its cursors and dead letters, and what status, reports and retries read of them.

Each sync holds an advisory lock named after (environment, tenant, data type) on its own
connection from before its row exists until after its row is final: two syncs of the same rows
never overlap, across instances, and a sync whose process died is recognisable (its lock is free).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from ..errors import NotFoundError
from ..views import (
    DeadLetters,
    DeadLetterView,
    Report,
    ReportRow,
    StatusSummary,
    SyncView,
    iso,
)
from .sql import load, resolve_id

_SQL = load("syncs.sql")

Executor = asyncpg.Pool | asyncpg.Connection


# -- the sync lock -------------------------------------------------------------------------------


def lock_name(environment: str, tenant_id: int, data_type: str) -> str:
    """What two syncs must never share at the same time: the same rows of the same tenant."""
    return f"stsync:{environment}:{tenant_id}:{data_type}"


async def try_lock(conn: Any, name: str) -> bool:
    """Take a sync lock if free. A cancel or failure that lands after the server may have granted it
    (the answer unread) terminates the connection, so a lock can never go back to the pool.
    """
    try:
        return bool(await conn.fetchval(_SQL["try_lock"], name))
    except BaseException:
        terminate(conn)
        raise


async def unlock(conn: Any, name: str) -> None:
    """Release a sync lock; a connection that cannot is terminated, and the lock goes with it.

    The pool hands connections on without resetting their sessions, so a held lock must not go back.
    """
    try:
        await conn.fetchval(_SQL["unlock"], name)
    except BaseException:
        terminate(conn)
        raise


def terminate(conn: Any) -> None:
    """Close a connection at once; its session (and any lock) ends, and asyncpg gives its pool slot
    back. A connection PostgreSQL already dropped was given back before: nothing to do."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


async def sweep_orphans(pool: asyncpg.Pool) -> list[uuid.UUID]:
    """Mark `interrupted` every running sync whose lock nobody holds: its process died.

    Exact across instances: a live sync holds its lock from before its row exists until after its
    row is final, and PostgreSQL releases the lock when the holder's connection dies.
    """
    swept: list[uuid.UUID] = []
    async with pool.acquire() as conn:
        for row in await conn.fetch(_SQL["running_syncs"]):
            name = lock_name(row["environment"], row["tenant_id"], row["data_type"])
            if not await try_lock(conn, name):
                continue
            try:
                if await conn.fetchval(_SQL["sync_still_running"], row["id"]):
                    await conn.execute(_SQL["interrupt_sync"], row["id"])
                    swept.append(row["id"])
            finally:
                await unlock(conn, name)
    return swept


# -- a sync's life ------------------------------------------------------------------------------


async def start(
    conn: asyncpg.Connection,
    sync_id: uuid.UUID,
    *,
    run_id: uuid.UUID | None,
    credential_id: uuid.UUID,
    data_type: str,
    trigger: str,
    mode: str,
    retry_of: uuid.UUID | None,
    attempt: int,
    instance: str | None,
    environment: str,
    tenant_id: int,
) -> Any:
    """The sync's row; its cursor, whether the tenant has records yet, and its encrypted secrets."""
    return await conn.fetchrow(
        _SQL["start_sync"],
        sync_id,
        run_id,
        credential_id,
        data_type,
        trigger,
        mode,
        retry_of,
        attempt,
        instance,
        environment,
        tenant_id,
    )


async def book_batch(
    conn: asyncpg.Connection,
    sync_id: uuid.UUID,
    *,
    credential_id: uuid.UUID,
    environment: str,
    tenant_id: int,
    data_type: str,
    continue_from: str | None,
    max_modified: datetime | None,
    processed: int,
    failed: int,
    pages: int,
    stored_ids: Sequence[str] = (),
    rejected: Sequence[tuple[str | None, str, bytes, bool]] = (),
    list_pages: Sequence[int] = (),
) -> None:
    """In the batch's transaction: dead letters resolved (`stored_ids`, records stored again) and
    new (`rejected`: record id, reason, raw bytes, whether jsonb takes them), the cursor and the
    sync's counters; for a backfill, the list pages the batch holds."""
    if list_pages:
        await conn.execute(_SQL["backfill_pages_done"], credential_id, data_type, list(list_pages))
    if stored_ids:
        await conn.execute(_SQL["resolve_dead_letters"], credential_id, data_type, stored_ids)
    if rejected:
        await conn.execute(
            _SQL["insert_dead_letters"],
            sync_id,
            credential_id,
            environment,
            tenant_id,
            data_type,
            [r[0] for r in rejected],
            [r[1] for r in rejected],
            [r[2] for r in rejected],
            [r[2] if r[3] else None for r in rejected],
        )
    await conn.execute(
        _SQL["batch_committed"],
        credential_id,
        data_type,
        continue_from,
        max_modified,
        sync_id,
        processed,
        processed - failed,
        failed,
        pages,
    )


async def begin_backfill(
    conn: asyncpg.Connection,
    credential_id: uuid.UUID,
    data_type: str,
    *,
    started_at: datetime,
    page_size: int,
    pages: int,
) -> None:
    """Record a backfill's plan, so that an interrupted one resumes where it was."""
    await conn.execute(
        _SQL["begin_backfill"], credential_id, data_type, started_at, page_size, pages
    )


async def end_backfill(conn: asyncpg.Connection, credential_id: uuid.UUID, data_type: str) -> None:
    """Forget a backfill's plan: the next pass reads the export from the beginning."""
    await conn.execute(_SQL["end_backfill"], credential_id, data_type)


async def finish(
    db: Executor,
    sync_id: uuid.UUID,
    *,
    status: str,
    category: str | None,
    message: str | None,
    full_pass_started_at: datetime | None,
    credential_outcome: str | None,
) -> asyncpg.Record | None:
    """The sync's end, its cursor's success marks and its credential's status in one statement;
    None when the sync was no longer running (settled by someone else)."""
    row: asyncpg.Record | None = await db.fetchrow(
        _SQL["finish_sync"],
        sync_id,
        status,
        category,
        message,
        full_pass_started_at,
        credential_outcome,
    )
    return row


async def rollback(conn: asyncpg.Connection) -> None:
    """End a transaction a cancellation left open on a connection (outside asyncpg's own)."""
    await conn.execute("ROLLBACK")


# -- what readers see ----------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def sync_view(row: asyncpg.Record) -> SyncView:
    """A `stsync.sync_view` row."""
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


def _summary(stats: list[asyncpg.Record], *, dead_letters: int) -> StatusSummary:
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


class SyncStore:
    """Reads of the sync log for status, runs, reports, retries and plans."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def status(
        self,
        *,
        company_id: str | None,
        running_only: bool,
        failed_only: bool,
        since: datetime | None,
        limit: int,
        run_id: uuid.UUID | None = None,
        environment: str | None = None,
        data_type: str | None = None,
    ) -> tuple[list[SyncView], StatusSummary]:
        """The newest syncs matching the filters, and statistics over all that match.

        `failed_only`: every status a retry picks up (failed, timed out, interrupted).
        """
        filters = (company_id, running_only, failed_only, since, run_id, environment, data_type)
        rows = await self._pool.fetch(_SQL["select_syncs"], *filters, limit)
        if since is None and run_id is None:  # all time: the totals, not a scan of the whole log
            stats = await self._pool.fetch(
                _SQL["summarize_totals"],
                company_id,
                running_only,
                failed_only,
                environment,
                data_type,
            )
        else:
            stats = await self._pool.fetch(_SQL["summarize_syncs"], *filters)
        dead = await self._pool.fetchval(_SQL["count_open_dead_letters"], company_id)
        return [sync_view(r) for r in rows], _summary(stats, dead_letters=dead)

    async def resolve(self, ref: str) -> uuid.UUID:
        """The sync a whole id or a unique prefix of one stands for."""
        return await resolve_id(self._pool, _SQL["resolve_sync_id"], ref, "sync")

    async def get(self, sync_id: uuid.UUID) -> SyncView:
        """One sync, with its whole error message."""
        row = await self._pool.fetchrow(_SQL["select_sync"], sync_id)
        if row is None:
            raise NotFoundError(f"no sync with id {sync_id}")
        return sync_view(row)

    async def finished_of_run(self, run_id: uuid.UUID) -> list[SyncView]:
        """A run's finished syncs, every instance's, oldest first."""
        return [sync_view(r) for r in await self._pool.fetch(_SQL["finished_syncs_of_run"], run_id)]

    async def running_where(self, sync_id: uuid.UUID) -> asyncpg.Record | None:
        """(instance, run_id) of a running sync, None when it is not running."""
        return await self._pool.fetchrow(_SQL["sync_running_where"], sync_id)

    async def cursors(self, credential_ids: Sequence[uuid.UUID]) -> dict[tuple[Any, str], Any]:
        """Cursors by (credential id, data type), for a plan."""
        rows = await self._pool.fetch(_SQL["select_cursors"], list(credential_ids))
        return {(r["credential_id"], r["data_type"]): r for r in rows}

    async def retry_candidates(self, since: datetime) -> list[asyncpg.Record]:
        """The latest sync of each pair started since `since` (the caller keeps the failed)."""
        return await self._pool.fetch(_SQL["retry_candidates"], since)

    async def dead_letters(
        self,
        *,
        credential_id: uuid.UUID | None,
        company_id: str | None,
        environment: str | None,
        data_type: str | None,
        include_resolved: bool,
        limit: int,
    ) -> DeadLetters:
        rows = await self._pool.fetch(
            _SQL["select_dead_letters"],
            credential_id,
            company_id,
            environment,
            data_type,
            include_resolved,
            limit,
        )
        return {
            "dead_letters": [_dead_letter_view(r) for r in rows],
            "total": rows[0]["total"] if rows else 0,
        }

    async def prune(self, before: datetime, limit: int) -> int:
        """Retention: up to `limit` finished syncs started before `before`; how many went."""
        return int(await self._pool.fetchval(_SQL["prune_sync_log"], before, limit))

    async def prune_dead_letters(self, before: datetime, limit: int) -> int:
        """Retention: up to `limit` dead letters resolved before `before` (open ones stay)."""
        return int(await self._pool.fetchval(_SQL["prune_dead_letters"], before, limit))

    async def open_dead_letters_by_kind(self) -> dict[tuple[str, str], int]:
        """Unresolved dead letters per (environment, data type): the gauge."""
        rows = await self._pool.fetch(_SQL["open_dead_letters_by_kind"])
        return {(r["environment"], r["data_type"]): r["n"] for r in rows}

    async def report(self, hours: float) -> Report:
        """Counts per (credential, data type) since `hours` ago, with the window's summary."""
        now = datetime.now(UTC)
        since = now - timedelta(hours=hours)
        rows: list[ReportRow] = [
            {
                "company_id": r["company_id"],
                "company": r["company_name"],
                "credential_id": str(r["credential_id"]),
                "environment": r["environment"],
                "data_type": r["data_type"],
                "syncs": r["syncs"],
                "completed": r["completed"],
                "failed": r["failed"],
                "records_processed": r["records_processed"],
                "records_failed": r["records_failed"],
                "last_status": r["last_status"],
                "last_success_at": iso(r["last_success_at"]),
                "last_error": r["last_error"],
            }
            for r in await self._pool.fetch(_SQL["report_rows"], since)
        ]
        stats = await self._pool.fetch(
            _SQL["summarize_syncs"], None, False, False, since, None, None, None
        )
        dead = await self._pool.fetchval(_SQL["count_open_dead_letters"], None)
        return {
            "generated_at": iso(now) or "",
            "since": iso(since) or "",
            "hours": hours,
            "rows": rows,
            "summary": _summary(stats, dead_letters=dead),
        }


def _dead_letter_view(row: asyncpg.Record) -> DeadLetterView:
    """The raw bytes as text, anything not UTF-8 escaped (`\\xff`)."""
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
