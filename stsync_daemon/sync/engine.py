"""`synchronize()`: one (credential, data type) from its cursor to the end of the export.

Each batch of pages is written in one transaction together with the cursor that follows it and the
sync log's counters, so a sync killed at any instant resumes exactly after its last committed batch.
A session advisory lock per (environment, tenant, data type), held on the sync's own connection,
keeps two syncs of the same data apart across processes and hosts; PostgreSQL drops it if we die.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import SecretStr

from .. import cycles
from ..enums import DataType, ErrorCategory, SyncMode, SyncStatus, Trigger
from ..errors import (
    ConfigurationError,
    ConflictError,
    DatabaseError,
    InvalidCredentialsError,
    StsyncError,
    SyncTimeoutError,
)
from ..limits import (
    BACKFILL_CONCURRENCY_DEFAULT,
    BACKFILL_PAGE_SIZE_DEFAULT,
    SYNC_TIMEOUT_DEFAULT,
)
from ..logs import log_event
from ..servicetitan import (
    ExportPage,
    ExportTokenInvalidError,
    ServiceTitanClient,
    TenantClient,
    UnreadableRecord,
)
from ..store import records as record_tables
from ..store import syncs as sync_log
from ..store.credentials import Credential, CredentialStore
from ..store.db import DB_ERRORS, describe_db_error
from ..store.syncs import lock_name, terminate, try_lock, unlock
from .records import Batch, Rejected, Row, new_batch

logger = logging.getLogger(__name__)

# How far before the last committed modification a restart by date begins: late-arriving updates.
RESTART_LOOKBACK = timedelta(minutes=30)
# A batch is committed at this many bytes of JSON even below `commit_batch_records`, so that
# memory stays flat whatever the record size.
_BATCH_BYTES = 8 * 1024 * 1024
# How long the writer waits for the next page before it writes the pages it has.
_IDLE_WRITE_SECONDS = 0.05
# A first load this large leaves statistics worth refreshing before the next sync plans its merge.
_ANALYZE_AFTER_RECORDS = 50_000
# Restarts by date after a refused continuation token, per sync, before it fails as `api`.
_MAX_RESTARTS = 3
# A sync's end is written again at these intervals (s) while PostgreSQL is away, then every last one.
_FINISH_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
# What PostgreSQL (or asyncpg's encoder) raises for a value it cannot store: one bad record, not an
# outage. A batch that fails so is written again record by record to find it.
_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.ProgramLimitExceededError,
    ValueError,  # asyncpg's encoders: an int beyond int64, an unencodable str or Decimal
    OverflowError,
)


class SyncAlreadyRunning(ConflictError):
    """Another sync of the same (environment, tenant, data type) holds the lock."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where a sync starts, read by its start statement."""

    start: str | None  # a continuation token, or None: from the beginning
    safe_through: datetime | None  # where a restart by date may begin (None: from the beginning)
    secrets: Mapping[str, Any]  # the credential's encrypted columns
    load: _Load
    backfill: _Backfill | None = None  # one interrupted part-way, to resume


@dataclass(frozen=True)
class _Backfill:
    """A backfill's plan, kept on the cursor: the list pages to read and those already committed."""

    started_at: datetime  # the catch-up export starts here, minus the look-back
    page_size: int
    pages: int
    done: frozenset[int] = frozenset()

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> _Backfill | None:
        if row["backfill_started_at"] is None:
            return None
        return cls(
            row["backfill_started_at"],
            row["backfill_page_size"],
            row["backfill_pages"],
            frozenset(row["backfill_done"] or ()),
        )

    @property
    def todo(self) -> list[int]:
        return [n for n in range(1, self.pages + 1) if n not in self.done]


@dataclass
class _Load:
    """How a sync writes its batches.

    `direct`: the tenant had no rows of this data type when a sync from the beginning started, so
    batches are copied straight into the table (what the COPY ceiling does) instead of through the
    stage table and the merge. A batch that meets a row already there (an id exported twice) is
    rolled back and merged instead, and so is every later batch. `staged`: this sync's connection
    has its stage table.
    """

    direct: bool = False
    direct_records: int = 0
    staged: bool = False
    open_letters: bool = False  # the pair has unresolved dead letters: stored ids may resolve them
    from_beginning: bool = False  # the pass now under way started at the export's beginning


@dataclass(frozen=True)
class SyncRequest:
    """One sync to perform."""

    credential: Credential
    data_type: DataType
    mode: SyncMode = SyncMode.INCREMENTAL
    trigger: Trigger = Trigger.MANUAL
    run_id: uuid.UUID | None = None
    retry_of: uuid.UUID | None = None
    attempt: int = 1
    timeout_seconds: float = SYNC_TIMEOUT_DEFAULT
    sync_id: uuid.UUID | None = None


@dataclass(frozen=True)
class SyncProgress:
    """Emitted after each committed batch and at the end."""

    sync_id: uuid.UUID
    credential_id: uuid.UUID
    company_name: str
    environment: str
    data_type: DataType
    pages: int
    records_processed: int
    records_successful: int
    records_failed: int
    elapsed_seconds: float

    @property
    def rate(self) -> float:
        """Records per second so far."""
        return self.records_processed / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


@dataclass
class SyncResult:
    """How a sync ended."""

    sync_id: uuid.UUID
    request: SyncRequest
    status: SyncStatus
    started_at: datetime
    completed_at: datetime | None = None
    records_processed: int = 0
    records_successful: int = 0
    records_failed: int = 0
    pages: int = 0
    error_category: ErrorCategory | None = None
    error_message: str | None = None
    # What the sync's end did to its credential: "ok" (clears `error`), "error" (parks it) or None.
    credential_outcome: str | None = None
    # Where the time went (seconds; fetching overlaps the other two): for benchmarks and logs.
    timings: dict[str, float] = field(
        default_factory=lambda: {"fetch": 0.0, "convert": 0.0, "database": 0.0}
    )

    @property
    def duration_seconds(self) -> float:
        if self.completed_at is None:
            return 0.0
        return (self.completed_at - self.started_at).total_seconds()


@dataclass
class SyncControl:
    """Lets the runner say why it cancels a sync: `cancelled` and `interrupted` differ in the log."""

    cancel_status: SyncStatus = SyncStatus.CANCELLED
    sync_id: uuid.UUID | None = None
    last_progress: SyncProgress | None = field(default=None)
    result: SyncResult | None = field(default=None)


ProgressCallback = Callable[[SyncProgress], Awaitable[None] | None]


# Errors that are the tenant's or the daemon's, not the list endpoints': the export meets them too.
_NOT_THE_LISTS = (InvalidCredentialsError, ConfigurationError)


def _log_backfill(event: str, result: SyncResult, level: int = logging.INFO, **fields: Any) -> None:
    request = result.request
    log_event(
        logger,
        level,
        event,
        sync_id=result.sync_id,
        credential_id=request.credential.id,
        data_type=request.data_type,
        **fields,
    )


def _export_from(moment: datetime) -> str:
    """An export's `from` as a date: every record modified since then."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _list_pages(
    tenant: TenantClient,
    data_type: DataType,
    page_size: int,
    numbers: list[int],
    concurrency: int,
    timings: Timings,
) -> AsyncGenerator[Batch, None]:
    """The list pages `numbers`, each converted to rows as it arrives and yielded, with up to
    `concurrency` requests out.

    A page is converted in its request's task, in the same synchronous stretch as its decoding:
    a decoded page of 5,000 invoices is about 5.5 times its JSON (67 MB), its rows about its
    JSON, so pages waiting for the writer hold rows, never decoded records. How many requests are
    out adapts: when the filler had to wait for a page, the API is the bound and one more goes out
    (up to `concurrency`; the tenant's rate limiter paces them all); when pages wait for the
    filler, the database is, and one fewer does. A failed request fails the whole (the rest are
    cancelled); the pages already yielded stay committed and the next sync reads only the others.
    """
    waiting = deque(numbers)
    arrived: asyncio.Queue[asyncio.Task[Batch]] = asyncio.Queue()
    out: set[asyncio.Task[Batch]] = set()
    limit = min(2, concurrency)

    async def fetch(number: int) -> Batch:
        page = await tenant.fetch_list_page(data_type, number, page_size)
        part = new_batch(data_type)
        _convert(page, part, timings)
        return part

    def landed(task: asyncio.Task[Batch]) -> None:
        out.discard(task)
        arrived.put_nowait(task)

    try:
        for _ in numbers:
            while waiting and len(out) + arrived.qsize() < limit:
                task = asyncio.create_task(
                    fetch(waiting.popleft()), name=f"stsync-backfill-{data_type.value}"
                )
                out.add(task)
                task.add_done_callback(landed)
            filler_waited = arrived.empty()
            task = await arrived.get()
            if filler_waited:
                limit = min(concurrency, limit + 1)
            elif arrived.qsize():
                limit = max(1, limit - 1)
            yield task.result()  # a failed request's error fails the backfill here
    finally:
        for task in out:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(*out, return_exceptions=True)
        while not arrived.empty():  # retrieve what landed unread, so no error goes unobserved
            with contextlib.suppress(asyncio.CancelledError, Exception):
                arrived.get_nowait().result()


def _unreadable(record: UnreadableRecord) -> Rejected:
    """A record of the page that could not be decoded: a dead letter, kept byte for byte."""
    return Rejected(
        record.record_id,
        f"could not be decoded as JSON ({record.reason}); kept as received",
        record.raw,
        jsonb_ok=False,
    )


def _describe_refusal(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.PostgresError):
        return describe_db_error(exc)
    return f"{type(exc).__name__}: {exc}"


def classify(exc: BaseException) -> tuple[ErrorCategory, str]:
    """The sync log's category and an operator-facing, secret-free message."""
    if isinstance(exc, StsyncError):
        return exc.category, str(exc) or type(exc).__name__
    if isinstance(exc, DB_ERRORS):
        return ErrorCategory.DATABASE, f"database error: {describe_db_error(exc)}"
    return ErrorCategory.UNEXPECTED, f"unexpected {type(exc).__name__}: {exc}"


# Told about the daemon's own configuration: (subject, message) when a sync proves it wrong,
# (subject, None) when a sync proves it right again.
ProblemReporter = Callable[[str, str | None], None]
_PROVEN_BY_SUCCESS = ("secrets_key", "app_key")


@dataclass(frozen=True, slots=True)
class _End:
    """What `finish_sync` writes: status, category, message, full pass start, credential outcome."""

    status: SyncStatus
    category: ErrorCategory | None
    message: str | None
    full_pass_started_at: datetime | None
    credential: str | None  # "ok", "error" or None

    def fields(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "category": self.category.value if self.category else None,
            "message": self.message,
            "full_pass_started_at": self.full_pass_started_at,
            "credential_outcome": self.credential,
        }


# What fills batches: an export page, or a list page converted as it arrived (`_list_pages`).
Page = ExportPage | Batch
Timings = dict[str, float]


def _convert(page: ExportPage, batch: Batch, timings: Timings) -> None:
    """The page's records as rows of `batch`, in one synchronous stretch without the collector:
    rows are tuples of scalars, and JSON builds no cycles to find."""
    clock = time.perf_counter()
    with cycles.paused():
        batch.add_page(
            page.records,
            page.continue_from,
            page.nbytes,
            [_unreadable(u) for u in page.unreadable] if page.unreadable else (),
            page.number,
        )
    timings["convert"] += time.perf_counter() - clock


class _Filling:
    """The batch being filled from pages (see `SyncEngine._batches`) and its hand-over queue."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.ready: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)
        self.grown = asyncio.Event()  # set when a page was added to `batch`
        self.last_page = time.monotonic()

    def take(self, data_type: DataType) -> Batch:
        """The batch as it is; the filler goes on with an empty one."""
        batch, self.batch = self.batch, new_batch(data_type)
        return batch

    async def fill(self, pages: AsyncIterator[Page], max_records: int, timings: Timings) -> None:
        clock = time.perf_counter()
        async for page in pages:
            timings["fetch"] += time.perf_counter() - clock
            batch = self.batch
            if isinstance(page, Batch):
                batch.absorb(page)
            else:
                _convert(page, batch, timings)
            del page  # its records are rows now: free them before waiting
            self.last_page = time.monotonic()
            self.grown.set()
            if batch.size >= max_records or batch.nbytes >= _BATCH_BYTES:
                self.take(batch.shape.data_type)
                await self.ready.put(batch)
                await self.ready.join()  # the writer has it: fill the next one meanwhile
            clock = time.perf_counter()
        if self.batch.pages:
            await self.ready.put(self.take(self.batch.shape.data_type))
        await self.ready.put(None)


class SyncEngine:
    """Runs syncs; shared by every run of the daemon."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        client: ServiceTitanClient,
        credentials: CredentialStore,
        *,
        app_key: SecretStr | None,
        commit_batch_records: int = 5000,
        instance: str | None = None,
        problems: ProblemReporter | None = None,
        backfill_min_records: int = 0,
        backfill_concurrency: int = BACKFILL_CONCURRENCY_DEFAULT,
        backfill_page_size: int = BACKFILL_PAGE_SIZE_DEFAULT,
    ) -> None:
        self._pool = pool
        self._client = client
        self._credentials = credentials
        self._app_key = app_key
        self._batch_records = commit_batch_records
        self._instance = instance
        self._problems = problems
        self._backfill_min = backfill_min_records  # 0: never
        self._backfill_concurrency = backfill_concurrency
        self._backfill_page_size = backfill_page_size

    async def synchronize(
        self,
        request: SyncRequest,
        *,
        progress: ProgressCallback | None = None,
        control: SyncControl | None = None,
    ) -> SyncResult:
        """Sync one (credential, data type); never raises for a failed sync, only returns it.

        Raises `SyncAlreadyRunning` when the same data is being synced elsewhere, `DatabaseError`
        when the sync cannot start, and re-raises cancellation after logging it. The sync holds one
        pooled connection and never waits for a second while it does.
        """
        control = control or SyncControl()
        credential = request.credential
        name = lock_name(
            credential.environment.value, credential.tenant_id, request.data_type.value
        )
        try:
            conn: Any = await self._pool.acquire()
        except DB_ERRORS as exc:
            raise DatabaseError(f"cannot reach PostgreSQL: {describe_db_error(exc)}") from None
        locked = False
        result: SyncResult | None = None
        end: _End | None = None
        cancelled: asyncio.CancelledError | None = None
        try:
            try:
                locked = await try_lock(conn, name)
                if not locked:
                    raise SyncAlreadyRunning(
                        f"{request.data_type} of {credential.company_name} "
                        f"({credential.environment}, tenant {credential.tenant_id}) "
                        "is already being synced"
                    )
                sync_id = request.sync_id or uuid.uuid4()
                started = await sync_log.start(
                    conn,
                    sync_id,
                    run_id=request.run_id,
                    credential_id=credential.id,
                    data_type=request.data_type.value,
                    trigger=request.trigger.value,
                    mode=request.mode.value,
                    retry_of=request.retry_of,
                    attempt=request.attempt,
                    instance=self._instance,
                    environment=credential.environment.value,
                    tenant_id=credential.tenant_id,
                )
                start: str | None = started["continue_from"]
                started_at: datetime = started["started_at"]
                plan = _Plan(
                    start,
                    started["safe_through"],
                    started,
                    # A first sync of an empty tenant copies straight into the table.
                    _Load(
                        direct=start is None and not started["has_records"],
                        open_letters=started["open_dead_letters"],
                    ),
                    _Backfill.from_row(started),
                )
            except DB_ERRORS as exc:
                raise DatabaseError(f"cannot start sync: {describe_db_error(exc)}") from None
            control.sync_id = sync_id
            result = SyncResult(sync_id, request, SyncStatus.RUNNING, started_at)
            log_event(
                logger,
                logging.INFO,
                "sync.started",
                sync_id=sync_id,
                run_id=request.run_id,
                credential_id=credential.id,
                company=credential.company_name,
                environment=credential.environment,
                data_type=request.data_type,
                mode=request.mode,
                trigger=request.trigger,
                resume=bool(start),
            )
            end, cancelled = await self._run_guarded(conn, request, result, plan, progress, control)
            if await self._write_end(conn, result, end):
                end = None
        finally:
            # Shielded: a second cancellation during cleanup must not leak the connection (the
            # pool would then wait for it forever on shutdown).
            await asyncio.shield(self._release(conn, name if locked else None))
        if end is not None and result is not None:
            # The sync's own connection could not write its end: it is back in the pool now, so
            # retrying holds no connection while it waits for PostgreSQL.
            await self._write_end_until_done(result, end, patient=cancelled is None)
        assert result is not None
        self._settle(request, result, end or _End(result.status, None, None, None, None))
        control.result = result
        if progress is not None:
            event = self._progress_event(request, result, result.duration_seconds)
            control.last_progress = event
            outcome = progress(event)
            if outcome is not None:
                await outcome
        if cancelled is not None:
            raise cancelled
        return result

    async def _release(self, conn: Any, lock: str | None) -> None:
        # A terminated connection went back to the pool by itself (asyncpg detaches its proxy,
        # and the lock died with its session): both calls then fail harmlessly.
        with contextlib.suppress(*DB_ERRORS):
            if lock is not None and not conn.is_closed():
                await unlock(conn, lock)
        with contextlib.suppress(*DB_ERRORS):
            await self._pool.release(conn)

    async def _run_guarded(
        self,
        conn: asyncpg.Connection,
        request: SyncRequest,
        result: SyncResult,
        plan: _Plan,
        progress: ProgressCallback | None,
        control: SyncControl,
    ) -> tuple[_End, asyncio.CancelledError | None]:
        """Copy under the time limit; how it ended, and the cancellation to re-raise if any."""
        clock0 = time.monotonic()
        status = SyncStatus.COMPLETED
        category: ErrorCategory | None = None
        message: str | None = None
        cancelled: asyncio.CancelledError | None = None
        credential_outcome: str | None = None
        try:
            await asyncio.wait_for(
                self._copy(conn, request, result, plan, progress, clock0),
                timeout=request.timeout_seconds,
            )
        except TimeoutError:
            status = SyncStatus.TIMED_OUT
            category, message = classify(
                SyncTimeoutError(
                    f"stopped after its {request.timeout_seconds:g} s limit with "
                    f"{result.records_processed} records committed; the next sync resumes there"
                )
            )
        except asyncio.CancelledError as exc:
            cancelled = exc
            status = control.cancel_status
            category = ErrorCategory.UNEXPECTED if status is SyncStatus.INTERRUPTED else None
            message = (
                "the daemon stopped during this sync; the next sync resumes from its last "
                "committed page"
                if status is SyncStatus.INTERRUPTED
                else "cancelled by an operator; the next sync resumes from its last committed page"
            )
        except Exception as exc:
            status = SyncStatus.FAILED
            category, message = classify(exc)
            if category is ErrorCategory.UNEXPECTED:
                logger.critical("sync.crashed", exc_info=exc)
            elif category is ErrorCategory.AUTH:
                credential_outcome = "error"  # this tenant rejected us: park its credential
            elif isinstance(exc, ConfigurationError) and self._problems is not None:
                # The daemon's setup, not the tenant: no credential is marked; health says it.
                self._problems(exc.subject, message)
        if status is SyncStatus.COMPLETED:
            credential_outcome = "ok"
        # A completed pass from the beginning is what `full_completed_at` records.
        full_pass = request.mode is SyncMode.FULL or plan.load.from_beginning
        end = _End(
            status,
            category,
            message,
            result.started_at if full_pass else None,
            credential_outcome,
        )
        return end, cancelled

    async def _write_end(self, conn: asyncpg.Connection, result: SyncResult, end: _End) -> bool:
        """Write the sync's end on its own connection; False when that connection failed."""
        try:
            if conn.is_in_transaction():
                # A cancellation can land mid-transaction; roll it back before logging.
                await sync_log.rollback(conn)
            row = await sync_log.finish(conn, result.sync_id, **end.fields())
        except DB_ERRORS:
            # Broken (cancelled mid-query, or PostgreSQL went away): drop it, and its lock with it.
            terminate(conn)
            return False
        self._ended(result, end, row)
        return True

    async def _write_end_until_done(self, result: SyncResult, end: _End, *, patient: bool) -> None:
        """Retry the end's bookkeeping until PostgreSQL takes it (a cancelled sync tries briefly:
        the orphan sweep settles its row once the daemon is back)."""
        attempt = 0
        while True:
            try:
                row = await sync_log.finish(self._pool, result.sync_id, **end.fields())
            except DB_ERRORS as exc:
                delay = _FINISH_RETRY_SECONDS[min(attempt, len(_FINISH_RETRY_SECONDS) - 1)]
                attempt += 1
                log_event(
                    logger,
                    logging.WARNING,
                    "sync.end_unrecorded",
                    sync_id=result.sync_id,
                    attempt=attempt,
                    retry_seconds=delay if patient else None,
                    error=describe_db_error(exc),
                )
                if not patient and attempt >= 2:
                    self._ended(result, end, None)
                    result.error_message = (
                        f"{end.message or 'ended'}; its end could not be recorded "
                        f"({describe_db_error(exc)})"
                    )
                    return
                await asyncio.sleep(delay)
                continue
            self._ended(result, end, row)
            return

    def _ended(self, result: SyncResult, end: _End, row: asyncpg.Record | None) -> None:
        result.status, result.error_category, result.error_message = (
            end.status,
            end.category,
            end.message,
        )
        if row is not None:
            result.credential_outcome = end.credential
            result.completed_at = row["completed_at"]
            result.records_processed = row["records_processed"]
            result.records_successful = row["records_successful"]
            result.records_failed = row["records_failed"]
            result.pages = row["pages"]
        if result.completed_at is None:
            result.completed_at = datetime.now(UTC)

    def _settle(self, request: SyncRequest, result: SyncResult, end: _End) -> None:
        """Log the end, and tell health what a success proved."""
        if result.status is SyncStatus.COMPLETED and self._problems is not None:
            for subject in _PROVEN_BY_SUCCESS:
                self._problems(subject, None)
        level = logging.INFO if result.status is SyncStatus.COMPLETED else logging.WARNING
        credential = request.credential
        log_event(
            logger,
            level,
            f"sync.{result.status.value}",
            sync_id=result.sync_id,
            run_id=request.run_id,
            credential_id=credential.id,
            company=credential.company_name,
            environment=credential.environment,
            data_type=request.data_type,
            records=result.records_processed,
            failed=result.records_failed,
            pages=result.pages,
            seconds=round(result.duration_seconds, 3),
            fetch_seconds=round(result.timings["fetch"], 3),
            database_seconds=round(result.timings["database"], 3),
            error_category=result.error_category,
            error=result.error_message,
        )

    async def _copy(
        self,
        conn: asyncpg.Connection,
        request: SyncRequest,
        result: SyncResult,
        plan: _Plan,
        progress: ProgressCallback | None,
        clock0: float,
    ) -> None:
        access = await self._credentials.access(request.credential, self._app_key, plan.secrets)
        load = plan.load
        tenant = self._client.tenant(access)
        shape = new_batch(request.data_type).shape
        start = plan.start
        safe_through = plan.safe_through
        backfilled = False
        if start is None and self._backfill_min > 0:
            backfill = plan.backfill or await self._plan_backfill(conn, tenant, request, result)
            if backfill is not None and await self._backfill(
                conn, tenant, request, result, backfill, load, progress, clock0
            ):
                # Catch up with every change made since it began; the export's token takes over.
                safe_through = backfill.started_at
                start = _export_from(backfill.started_at - RESTART_LOOKBACK)
                backfilled = True
        restarts = 0
        while True:
            load.from_beginning = start is None or backfilled
            try:
                await self._drain(
                    conn,
                    request,
                    result,
                    tenant.export(request.data_type, start),
                    load,
                    progress,
                    clock0,
                )
                break
            except ExportTokenInvalidError:
                restarts += 1
                if restarts > _MAX_RESTARTS:
                    raise
            # A refused token (expired, or reset by ServiceTitan): restart by date from the last
            # pass that completed, whatever order the export was in, else from the beginning.
            start = _export_from(safe_through - RESTART_LOOKBACK) if safe_through else None
            log_event(
                logger,
                logging.WARNING,
                "sync.cursor_expired",
                sync_id=result.sync_id,
                credential_id=request.credential.id,
                data_type=request.data_type,
                restart_from=start or "beginning",
                restarts=restarts,
            )
        if load.direct_records >= _ANALYZE_AFTER_RECORDS:
            # The planner has never seen these rows; later merges and status queries need it to.
            await record_tables.analyze(conn, shape.table)

    async def _plan_backfill(
        self,
        conn: asyncpg.Connection,
        tenant: TenantClient,
        request: SyncRequest,
        result: SyncResult,
    ) -> _Backfill | None:
        """A backfill when the tenant is large enough (the list's totalCount), recorded on the
        cursor before its first page so that an interruption resumes it; else None."""
        began = datetime.now(UTC)
        try:
            total = await tenant.count_changed(request.data_type, None)
        except _NOT_THE_LISTS:
            raise
        except StsyncError as exc:
            # The list endpoint refuses, garbles or keeps failing what the export may still serve
            # (a scope, a change or an outage on ServiceTitan's side): the export alone, as before
            # backfills existed.
            _log_backfill("sync.backfill_unavailable", result, logging.WARNING, error=str(exc))
            return None
        if total < self._backfill_min:
            return None
        size = self._backfill_page_size
        backfill = _Backfill(began, size, max(1, -(-total // size)))
        await sync_log.begin_backfill(
            conn,
            request.credential.id,
            request.data_type.value,
            started_at=began,
            page_size=size,
            pages=backfill.pages,
        )
        _log_backfill(
            "sync.backfill_started",
            result,
            records=total,
            pages=backfill.pages,
            page_size=size,
            concurrency=self._backfill_concurrency,
        )
        return backfill

    async def _backfill(
        self,
        conn: asyncpg.Connection,
        tenant: TenantClient,
        request: SyncRequest,
        result: SyncResult,
        backfill: _Backfill,
        load: _Load,
        progress: ProgressCallback | None,
        clock0: float,
    ) -> bool:
        """Read the pages not committed yet, several in flight, committing each as it arrives.

        False when the list endpoints answer what no retry will change: the backfill is given up
        and the export reads from the beginning (committed pages stay, newer versions win). An
        outage raises: the next sync resumes the backfill where it was.
        """
        todo = backfill.todo
        if backfill.done:
            _log_backfill(
                "sync.backfill_resumed", result, pages_left=len(todo), pages=backfill.pages
            )
        pages = _list_pages(
            tenant,
            request.data_type,
            backfill.page_size,
            todo,
            self._backfill_concurrency,
            result.timings,
        )
        try:
            await self._drain(conn, request, result, pages, load, progress, clock0)
        except _NOT_THE_LISTS:
            raise
        except StsyncError as exc:
            if exc.transient:
                raise
            _log_backfill("sync.backfill_abandoned", result, logging.WARNING, error=str(exc))
            await sync_log.end_backfill(conn, request.credential.id, request.data_type.value)
            return False
        _log_backfill(
            "sync.backfill_finished",
            result,
            pages=len(todo),
            records=result.records_processed,
            seconds=round(time.monotonic() - clock0, 3),
        )
        return True

    async def _drain(
        self,
        conn: asyncpg.Connection,
        request: SyncRequest,
        result: SyncResult,
        pages: AsyncIterator[Page],
        load: _Load,
        progress: ProgressCallback | None,
        clock0: float,
    ) -> None:
        """Commit batch after batch of `pages` (an export, or a backfill's list pages) to the end."""
        async with contextlib.aclosing(
            self._batches(pages, request.data_type, result.timings)
        ) as batches:
            async for batch in batches:
                await self._commit(conn, request, result, batch, load)
                del batch  # let it go before the next one is filled
                if progress is not None:
                    outcome = progress(
                        self._progress_event(request, result, time.monotonic() - clock0)
                    )
                    if outcome is not None:
                        await outcome

    async def _batches(
        self,
        pages: AsyncIterator[Page],
        data_type: DataType,
        timings: Timings,
    ) -> AsyncGenerator[Batch, None]:
        """Batches of `pages`, filled by a task of their own while the previous batch is written.

        Double buffering: the filler downloads, decodes and converts the next batch while the
        writer waits on PostgreSQL, then waits itself until the writer takes it, so at most two
        batches of rows exist. When no page has come for `_IDLE_WRITE_SECONDS` and the writer has
        nothing to write, it takes the batch being filled as it is (a slow API's pages are
        committed as they arrive, not only when a batch fills).
        """
        filling = _Filling(new_batch(data_type))
        filler = asyncio.create_task(
            filling.fill(pages, self._batch_records, timings), name="stsync-batch-filler"
        )
        getter: asyncio.Future[Batch | None] | None = None
        grown: asyncio.Future[Any] | None = None
        try:
            while True:
                if getter is None:
                    getter = asyncio.ensure_future(filling.ready.get())
                waiting: set[asyncio.Future[Any]] = {getter, filler}
                quiet = time.monotonic() - filling.last_page
                if not filling.batch.pages:
                    filling.grown.clear()
                    grown = asyncio.ensure_future(filling.grown.wait())
                    waiting.add(grown)
                done, _ = await asyncio.wait(
                    waiting,
                    timeout=None if grown else max(0.0, _IDLE_WRITE_SECONDS - quiet),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if grown is not None:
                    grown.cancel()
                    grown = None
                if getter in done:
                    taken = getter.result()
                    getter = None
                    filling.ready.task_done()
                    if taken is None:
                        break
                    yield taken
                    del taken
                elif filler in done:
                    getter.cancel()
                    getter = None
                    filler.result()  # raises the pages' error; else the end is in the queue
                elif (
                    not done
                    and filling.ready.empty()  # (a batch queued as the wait ended comes first)
                    and time.monotonic() - filling.last_page >= _IDLE_WRITE_SECONDS
                ):
                    # The API is slower than the writer: write what is here while the next page
                    # downloads, rather than all of it after the last one.
                    yield filling.take(data_type)
        finally:
            for future in (getter, grown):
                if future is not None:
                    future.cancel()  # a timeout or a cancel can land while it waits
            filler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await filler  # its outcome retrieved: an error of its own is not left unobserved

    async def _commit(
        self,
        conn: asyncpg.Connection,
        request: SyncRequest,
        result: SyncResult,
        batch: Batch,
        load: _Load,
    ) -> None:
        clock = time.perf_counter()
        try:
            written = False
            if batch.rows and load.direct:
                try:
                    await self._write(conn, request, result, batch, load, direct=True)
                    written = True
                    load.direct_records += len(batch.rows)
                except asyncpg.UniqueViolationError:
                    load.direct = False
            if not written:
                await self._ensure_stage(conn, batch, load)
                await self._write(conn, request, result, batch, load, direct=False)
        except _REFUSED as exc:
            # A record PostgreSQL cannot store failed the whole batch: find it and keep the rest.
            await self._ensure_stage(conn, batch, load)
            await self._write_isolating(conn, request, result, batch, load, exc)
        result.timings["database"] += time.perf_counter() - clock
        failed = len(batch.rejected)
        result.records_processed += batch.processed
        result.records_successful += batch.processed - failed
        result.records_failed += failed
        result.pages += batch.pages

    async def _ensure_stage(self, conn: asyncpg.Connection, batch: Batch, load: _Load) -> None:
        if batch.rows and not load.staged:
            await record_tables.create_stage(conn, batch.shape.table)
            load.staged = True

    async def _write(
        self,
        conn: asyncpg.Connection,
        request: SyncRequest,
        result: SyncResult,
        batch: Batch,
        load: _Load,
        *,
        direct: bool,
    ) -> None:
        """One transaction: the batch's records, its dead letters, the cursor and the counters."""
        async with conn.transaction():
            if batch.rows and direct:
                await self._copy_direct(conn, request, batch)
            elif batch.rows:
                await self._merge(conn, request, batch, batch.rows.values())
            await self._book(conn, request, result, batch, load)

    async def _merge(
        self, conn: asyncpg.Connection, request: SyncRequest, batch: Batch, rows: Iterable[Row]
    ) -> None:
        credential = request.credential
        await record_tables.stage_and_merge(
            conn,
            batch.shape.table,
            rows,
            batch.shape.columns,
            credential.environment.value,
            credential.tenant_id,
        )

    async def _write_isolating(
        self,
        conn: asyncpg.Connection,
        request: SyncRequest,
        result: SyncResult,
        batch: Batch,
        load: _Load,
        refusal: BaseException,
    ) -> None:
        """The batch again, halving each refused part under a savepoint down to single records.

        Records refused alone become dead letters; the rest, the cursor and the counters commit
        together as always. When most of the batch is refused the cause is not a record (a changed
        table, say): the original error then fails the sync as before.
        """
        rows = list(batch.rows.values())
        refused: list[Rejected] = []
        table = batch.shape.table

        async def store(part: list[Row]) -> None:
            try:
                async with conn.transaction():
                    await self._merge(conn, request, batch, part)
                    await record_tables.clear_stage(conn, table)
            except _REFUSED as exc:
                if len(part) > 1:
                    middle = len(part) // 2
                    await store(part[:middle])
                    await store(part[middle:])
                    return
                row = part[0]
                refused.append(
                    Rejected(
                        str(row[0]),
                        f"PostgreSQL cannot store it: {_describe_refusal(exc)}",
                        bytes(row[-1][1:]),
                        jsonb_ok=False,
                    )
                )

        async with conn.transaction():
            await store(rows)
            if len(refused) > max(10, len(rows) // 2):
                raise refusal
            for rejected in refused:
                del batch.rows[int(rejected.record_id or 0)]
            batch.rejected.extend(refused)
            await self._book(conn, request, result, batch, load)
        log_event(
            logger,
            logging.WARNING,
            "sync.records_refused",
            sync_id=result.sync_id,
            credential_id=request.credential.id,
            data_type=request.data_type,
            records=len(refused),
            record_ids=[r.record_id for r in refused[:20]],
        )

    async def _book(
        self,
        conn: asyncpg.Connection,
        request: SyncRequest,
        result: SyncResult,
        batch: Batch,
        load: _Load,
    ) -> None:
        """In the batch's transaction: dead letters (new and resolved), the cursor, the counters."""
        credential = request.credential
        await sync_log.book_batch(
            conn,
            result.sync_id,
            credential_id=credential.id,
            environment=credential.environment.value,
            tenant_id=credential.tenant_id,
            data_type=request.data_type.value,
            continue_from=batch.continue_from,
            max_modified=batch.max_modified,
            processed=batch.processed,
            failed=len(batch.rejected),
            pages=batch.pages,
            stored_ids=(
                [str(record_id) for record_id in batch.rows]
                if load.open_letters and batch.rows
                else ()
            ),
            rejected=[(r.record_id, r.reason, r.raw, r.jsonb_ok) for r in batch.rejected],
            list_pages=batch.list_pages,
        )
        if batch.rejected:
            load.open_letters = True

    async def _copy_direct(
        self, conn: asyncpg.Connection, request: SyncRequest, batch: Batch
    ) -> None:
        """One binary COPY of the batch into the record table itself: the cheapest write there is."""
        await record_tables.copy_direct(
            conn,
            batch.shape.table,
            batch.rows.values(),
            batch.shape.columns,
            request.credential.environment.value,
            request.credential.tenant_id,
        )

    def _progress_event(
        self, request: SyncRequest, result: SyncResult, elapsed: float
    ) -> SyncProgress:
        return SyncProgress(
            sync_id=result.sync_id,
            credential_id=request.credential.id,
            company_name=request.credential.company_name,
            environment=request.credential.environment.value,
            data_type=request.data_type,
            pages=result.pages,
            records_processed=result.records_processed,
            records_successful=result.records_successful,
            records_failed=result.records_failed,
            elapsed_seconds=elapsed,
        )
