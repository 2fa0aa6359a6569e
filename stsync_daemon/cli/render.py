"""Human output of stsyncctl: aligned tables, summaries, the exact per-sync messages, live progress.

Pure functions of the protocol's answers and a width, so tests can check them without a terminal.
Times are shown in the local time zone of the machine (like journalctl), or in UTC with `--utc`
(`DISPLAY_UTC`); JSON output keeps UTC.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from ..control.protocol import (
    CredentialView,
    DeadLetterView,
    Health,
    Plan,
    Report,
    RunSummary,
    RunView,
    ScheduleView,
    SkippedView,
    StatusSummary,
    SyncView,
)
from ..enums import SyncStatus

ELLIPSIS = "..."
GAP = "  "
# Whether times are shown in UTC (`--utc`) rather than the machine's local time zone.
DISPLAY_UTC: ContextVar[bool] = ContextVar("DISPLAY_UTC", default=False)

# ---------------------------------------------------------------------------------------------
# Values


def when(value: str | None, *, empty: str = "-") -> str:
    """An ISO 8601 time as local (or, with `--utc`, UTC) `YYYY-MM-DD HH:MM:SS`; unparsable text is
    shown as it came."""
    if not value:
        return empty
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC if DISPLAY_UTC.get() else None)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """`1h 02m`, `3m 07s`, `12.3s`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def truncate(text: str, width: int) -> str:
    """Cut `text` to `width` characters, marking the cut; newlines become spaces."""
    text = " ".join(text.split()) if ("\n" in text or "\r" in text or "\t" in text) else text
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return text[:width]
    return text[: width - len(ELLIPSIS)] + ELLIPSIS


def dump_json(document: object) -> str:
    """The single JSON document of `--json-output`."""
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass(frozen=True)
class Column:
    """A table column: `optional` ones are dropped first when the width is short, `shrink` ones cut."""

    header: str
    right: bool = False
    max_width: int = 40
    optional: bool = False
    shrink: bool = False
    min_width: int = 8


def table(columns: Sequence[Column], rows: Iterable[Sequence[str]], width: int) -> str:
    """Aligned columns fitted to `width`: drop optional columns, then shrink the shrinkable ones."""
    rows = [list(row) for row in rows]
    keep = list(range(len(columns)))

    def natural(index: int) -> int:
        column = columns[index]
        longest = max((len(row[index]) for row in rows), default=0)
        return min(max(len(column.header), longest), max(column.max_width, len(column.header)))

    widths = {index: natural(index) for index in keep}

    def total() -> int:
        return sum(widths[index] for index in keep) + len(GAP) * (len(keep) - 1)

    def floor(index: int) -> int:
        column = columns[index]
        if not column.shrink:
            return widths[index]
        return min(widths[index], max(column.min_width, len(column.header)))

    def smallest() -> int:
        return sum(floor(index) for index in keep) + len(GAP) * (len(keep) - 1)

    # Drop optional columns (rightmost first) only if shrinking cannot make room for them.
    for index in reversed(range(len(columns))):
        if smallest() <= width:
            break
        if columns[index].optional:
            keep.remove(index)
    for index in reversed(keep):
        excess = total() - width
        if excess <= 0:
            break
        widths[index] = max(floor(index), widths[index] - excess)

    def line(cells: Sequence[str]) -> str:
        parts = []
        for index in keep:
            cell = truncate(cells[index], widths[index])
            parts.append(
                cell.rjust(widths[index]) if columns[index].right else cell.ljust(widths[index])
            )
        return GAP.join(parts).rstrip()

    out = [line([column.header for column in columns])]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Per-sync messages (their wording is part of the contract)


def sync_label(company: str, environment: str, data_type: str) -> str:
    """`<company> (<environment>, <data type>)`."""
    return f"{company} ({environment}, {data_type})"


def failure_reason(sync: SyncView) -> str:
    """What went wrong, in the daemon's words (its messages are written for operators)."""
    status = sync["status"]
    message = (sync.get("error_message") or "").strip()
    category = sync.get("error_category")
    if status == SyncStatus.TIMED_OUT:
        base = message or "timed out"
        return (
            f"{base} ({sync['records_processed']} records were committed; the next run resumes "
            "from there)"
        )
    if status == SyncStatus.CANCELLED:
        return message or "cancelled"
    if status == SyncStatus.INTERRUPTED:
        return message or "interrupted (the daemon stopped); the next run resumes from the cursor"
    if message:
        return message
    return f"{category} error" if category else status


def finished_line(sync: SyncView) -> str:
    """The line printed when a sync finishes."""
    label = sync_label(sync["company"], sync["environment"], sync["data_type"])
    if sync["status"] == SyncStatus.COMPLETED:
        return f"Completed sync for {label}: {sync['records_processed']} records processed"
    return f"Sync failed for {label}: {failure_reason(sync)}"


def found_line(action: str, total_credentials: int, total_syncs: int) -> str:
    """The first line of `process` / `retry`."""
    if action == "retry":
        return f"Found {total_syncs} failed syncs to retry"
    if total_credentials == 0:
        return "No credentials found matching the criteria"
    return f"Found {total_credentials} credentials to process"


def skipped_lines(skipped: Sequence[SkippedView]) -> list[str]:
    """Why some credentials were left out."""
    return [
        f"Skipped {sync_label(item['company'], item['environment'], item['data_type'])}: "
        f"{item['reason']}"
        for item in skipped
    ]


def run_summary(summary: RunSummary) -> str:
    """The closing block of `process` / `retry`."""
    failed = summary["failed_syncs"]
    lines = [
        "",
        "Summary",
        f"  Run:               {summary['run_id']} ({summary['status']})",
        f"  Credentials:       {summary['total_credentials']}",
        f"  Syncs:             {summary['total_syncs']} "
        f"({summary['successful_syncs']} successful, {failed} failed)",
        f"  Records processed: {summary['total_records_processed']}",
        f"  Execution time:    {duration(summary['execution_time_seconds'])}",
    ]
    if summary.get("skipped"):
        lines.append(f"  Skipped:           {len(summary['skipped'])}")
    if failed:
        lines.append("")
        lines.append(
            "Some syncs failed: see `stsyncctl status --failed-only`; `stsyncctl retry` re-runs them."
        )
    return "\n".join(lines)


def quiet_failure_lines(summary: RunSummary) -> list[str]:
    """What `process -q` / `retry -q` say (on stderr) when a run did not go well: each failed
    sync's line, then one line naming the run."""
    lines = [
        finished_line(sync)
        for sync in summary.get("syncs") or []
        if sync["status"] != SyncStatus.COMPLETED
    ]
    failed, total = summary["failed_syncs"], summary["total_syncs"]
    lines.append(
        f"run {summary['run_id']} {summary['status']}: {failed} of {total} syncs failed "
        f"(stsyncctl status --run {summary['run_id']})"
    )
    return lines


# ---------------------------------------------------------------------------------------------
# status


def _completed_cell(sync: SyncView) -> str:
    if sync["status"] == SyncStatus.RUNNING:
        return "Running"
    return when(sync.get("completed_at"))


def _error_cell(sync: SyncView) -> str:
    message = sync.get("error_message") or ""
    category = sync.get("error_category")
    if category and message:
        return f"[{category}] {message}"
    return message or (category or "")


STATUS_COLUMNS = (
    Column("ID", max_width=36),
    Column("Company", shrink=True, max_width=30, min_width=10),
    Column("Environment", optional=True, max_width=11),
    Column("Data Type", max_width=9),
    Column("Status", max_width=11),
    Column("Started", max_width=19),
    Column("Completed", max_width=19),
    Column("Processed", right=True, max_width=10),
    Column("Successful", right=True, max_width=10),
    Column("Failed", right=True, max_width=10),
    Column("Error", optional=True, shrink=True, max_width=60, min_width=20),
)


def status_table(syncs: Sequence[SyncView], width: int) -> str:
    """The `status` table; Environment and Error appear when the width allows."""
    rows = [
        [
            sync["id"],
            sync["company"],
            sync["environment"],
            sync["data_type"],
            sync["status"],
            when(sync["started_at"]),
            _completed_cell(sync),
            str(sync["records_processed"]),
            str(sync["records_successful"]),
            str(sync["records_failed"]),
            _error_cell(sync),
        ]
        for sync in syncs
    ]
    return table(STATUS_COLUMNS, rows, width)


def status_summary(summary: StatusSummary, shown: int) -> str:
    """Statistics over every matching sync (the table may show fewer)."""
    by_status = ", ".join(
        f"{status} {count}" for status, count in sorted(summary["by_status"].items())
    )
    rate = summary.get("success_rate")
    lines = [
        "",
        "Summary",
        f"  Syncs:             {summary['total_syncs']}"
        + (f" ({by_status})" if by_status else "")
        + (f", {shown} shown" if shown < summary["total_syncs"] else ""),
        f"  Success rate:      {'-' if rate is None else f'{rate * 100:.1f}%'}",
        f"  Records processed: {summary['total_records_processed']}",
        f"  Records failed:    {summary['total_records_failed']}",
        f"  Mean duration:     {duration(summary.get('mean_duration_seconds'))}",
    ]
    if summary.get("dead_letters"):
        lines.append(
            f"  Dead letters:      {summary['dead_letters']} open (stsyncctl dead-letters)"
        )
    return "\n".join(lines)


NO_SYNCS = "No sync operations found matching the criteria"


def sync_detail(sync: SyncView) -> str:
    """`show`: one sync, its whole error message on as many lines as it has (ServiceTitan's
    traceId included), control characters escaped."""
    attempt = str(sync["attempt"])
    if sync.get("retry_of"):
        attempt += f" (retry of {sync['retry_of']})"
    pairs: list[tuple[str, str]] = [
        ("ID", sync["id"]),
        ("Run", sync.get("run_id") or "-"),
        ("Company", f"{printable(sync['company'])} ({sync['company_id']})"),
        ("Credential", sync["credential_id"]),
        ("Environment", sync["environment"]),
        ("Tenant ID", str(sync["tenant_id"])),
        ("Data type", sync["data_type"]),
        ("Status", sync["status"]),
        ("Trigger", sync["trigger"]),
        ("Mode", sync["mode"]),
        ("Attempt", attempt),
        ("Instance", sync.get("instance") or "-"),
        ("Started", when(sync["started_at"])),
        (
            "Completed",
            "Running" if sync["status"] == SyncStatus.RUNNING else when(sync.get("completed_at")),
        ),
        ("Duration", duration(sync.get("duration_seconds"))),
        ("Records processed", str(sync["records_processed"])),
        ("Records successful", str(sync["records_successful"])),
        ("Records failed", str(sync["records_failed"])),
        ("Pages", str(sync["pages"])),
        ("Error category", sync.get("error_category") or "-"),
    ]
    message = sync.get("error_message")
    if not message:
        return _pairs([*pairs, ("Error message", "-")])
    lines = [printable(line) for line in message.splitlines()]
    return _pairs(pairs) + "\nError message:\n" + "\n".join(f"  {line}" for line in lines)


def open_dead_letters_note(count: int) -> str:
    """Said when `status` lists no sync but records still wait as dead letters."""
    return f"{_count(count, 'open dead letter')}: see `stsyncctl dead-letters`"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# ---------------------------------------------------------------------------------------------
# Dead letters


def printable(text: str) -> str:
    """One line with no control character: what records carry must not drive the terminal."""
    if any(c in text for c in "\n\r\t"):
        text = " ".join(text.split())
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


DEAD_LETTER_COLUMNS = (
    Column("ID", right=True, max_width=20),
    Column("Company", shrink=True, max_width=30, min_width=10),
    Column("Environment", optional=True, max_width=11),
    Column("Data Type", max_width=9),
    Column("Record ID", shrink=True, max_width=24, min_width=9),
    Column("Reason", shrink=True, max_width=1000, min_width=20),
    Column("Created", max_width=19),
    Column("Resolved", max_width=19),
)


def dead_letters_table(items: Sequence[DeadLetterView], width: int) -> str:
    """`dead-letters`: one row per record, the reason clipped to what the width leaves."""
    rows = [
        [
            str(item["id"]),
            printable(item.get("company") or "-"),
            item["environment"],
            item["data_type"],
            printable(item.get("record_id") or "-"),
            printable(item["reason"]),
            when(item["created_at"]),
            when(item.get("resolved_at")),
        ]
        for item in items
    ]
    return table(DEAD_LETTER_COLUMNS, rows, width)


def dead_letters_count(total: int, shown: int, *, include_resolved: bool) -> str:
    """The line under the table: `3 open dead letters (showing 3)`."""
    noun = "dead letter" if include_resolved else "open dead letter"
    return f"{_count(total, noun)} (showing {shown})"


def no_dead_letters(*, include_resolved: bool) -> str:
    """`dead-letters` when nothing matches."""
    return f"No {'' if include_resolved else 'open '}dead letters found matching the criteria"


# ---------------------------------------------------------------------------------------------
# Dry run


def plan_table(plan: Plan, width: int, *, estimate: bool) -> str:
    """What a run would do, one row per (credential, data type)."""
    columns = [
        Column("Company", shrink=True, max_width=30, min_width=10),
        Column("Environment", max_width=11),
        Column("Data Type", max_width=9),
        Column("Mode", max_width=11),
        Column("Resume From", max_width=25),
        Column("Last Success", max_width=19),
        Column("Credential", optional=True, max_width=36),
    ]
    if plan["action"] == "retry":
        columns.append(Column("Retry Of", optional=True, max_width=36))
        columns.append(Column("Attempt", right=True, max_width=7))
    if estimate:
        columns.append(Column("Estimated", right=True, max_width=40, shrink=True, min_width=9))
        columns.append(Column("Est. Time", right=True, max_width=10))
    rows = []
    for item in plan["items"]:
        row = [
            item["company"],
            item["environment"],
            item["data_type"],
            item["mode"],
            _resume_cell(item["resume_from"], item.get("cursor_modified_on")),
            when(item.get("last_success_at"), empty="never"),
            item["credential_id"],
        ]
        if plan["action"] == "retry":
            row.append(item.get("retry_of") or "-")
            row.append(str(item.get("attempt", "")))
        if estimate:
            row.append(_estimate_cell(item.get("estimated_records"), item.get("estimate_error")))
            seconds = item.get("estimated_seconds")
            row.append("?" if seconds is None else duration(seconds))
        rows.append(row)
    return table(columns, rows, width)


def _resume_cell(resume_from: str, cursor: str | None) -> str:
    if cursor:
        return when(cursor)
    return resume_from


def _estimate_cell(records: int | None, error: str | None) -> str:
    if records is not None:
        return str(records)
    return f"? ({error})" if error else "?"


def plan_text(plan: Plan, width: int, *, estimate: bool) -> str:
    """The whole dry-run output: count line, table, skipped credentials, next schedule fires."""
    items = plan["items"]
    lines = [found_line(plan["action"], plan["total_credentials"], len(items))]
    if items:
        lines.append("")
        lines.append(plan_table(plan, width, estimate=estimate))
        if estimate:
            known = [
                item["estimated_records"]
                for item in items
                if item.get("estimated_records") is not None
            ]
            lines.append("")
            lines.append(f"Estimated records: {sum(r for r in known if r is not None)}")
            backfills = sum(1 for item in items if item["mode"] == "backfill")
            if backfills:
                lines.append(
                    f"{backfills} first sync(s) of a large tenant would backfill: list pages read "
                    "in parallel, then the export catches up"
                )
    if plan.get("skipped"):
        lines.append("")
        lines.extend(skipped_lines(plan["skipped"]))
    if plan.get("schedules"):
        lines.append("")
        lines.append("Next scheduled runs:")
        for schedule in plan["schedules"]:
            lines.append(
                f"  {schedule['name']} ({schedule['action']}): "
                f"{when(schedule.get('next_fire_at'), empty='not scheduled')}"
            )
    lines.append("")
    lines.append("Dry run: nothing was synced or written.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Credentials, schedules, runs, report, health


def credentials_table(credentials: Sequence[CredentialView], width: int) -> str:
    """`credentials list`."""
    columns = (
        Column("ID", max_width=36),
        Column("Company ID", shrink=True, max_width=20),
        Column("Company", shrink=True, max_width=30, min_width=10),
        Column("Environment", max_width=11),
        Column("Tenant", right=True, max_width=12),
        Column("Status", max_width=8),
        Column("Schedule", max_width=8),
        Column("Last Error", optional=True, shrink=True, max_width=50, min_width=15),
    )
    rows = [
        [
            item["id"],
            item["company_id"],
            item["company"],
            item["environment"],
            str(item["tenant_id"]),
            item["status"],
            "on" if item["schedule_enabled"] else "off",
            item.get("last_error") or "",
        ]
        for item in credentials
    ]
    return table(columns, rows, width)


def credential_detail(item: CredentialView) -> str:
    """`credentials show` (and the answer of add/update/enable/disable): never a secret."""
    pairs: list[tuple[str, str]] = [
        ("ID", item["id"]),
        ("Company ID", item["company_id"]),
        ("Company", item["company"]),
        ("Environment", item["environment"]),
        ("Tenant ID", str(item["tenant_id"])),
        ("Client ID", item["client_id"]),
        ("Client secret", "(set, never shown)"),
        ("App key", "set" if item["has_app_key"] else "not set (the daemon's is used)"),
        ("Status", item["status"]),
        ("Scheduled", "yes" if item["schedule_enabled"] else "no"),
        ("Last error", item.get("last_error") or "-"),
        ("Last error at", when(item.get("last_error_at"))),
    ]
    for data_type, moment in sorted((item.get("last_success") or {}).items()):
        pairs.append((f"Last success ({data_type})", when(moment, empty="never")))
    pairs.append(("Created", when(item.get("created_at"))))
    pairs.append(("Updated", when(item.get("updated_at"))))
    return _pairs(pairs)


def _pairs(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(f"{(key + ':').ljust(width)} {value}" for key, value in pairs)


def _filters_cell(filters: Mapping[str, object]) -> str:
    shown = [f"{key}={value}" for key, value in filters.items() if value not in (None, False, "")]
    return " ".join(shown) or "-"


def schedules_table(schedules: Sequence[ScheduleView], width: int) -> str:
    """`schedules`."""
    columns = (
        Column("Name", shrink=True, max_width=24),
        Column("Cron", max_width=20),
        Column("Timezone", max_width=20),
        Column("Action", max_width=7),
        Column("Enabled", max_width=7),
        Column("Filters", shrink=True, max_width=50, min_width=10),
        Column("Last Fire", max_width=19),
        Column("Next Fire", max_width=19),
        Column("Running", optional=True, max_width=7),
        Column("Runs", right=True, optional=True, max_width=6),
        Column("Skips", right=True, optional=True, max_width=6),
        Column("Misfires", right=True, optional=True, max_width=8),
    )
    rows = [
        [
            item["name"],
            item["cron"],
            item["timezone"],
            item["action"],
            "paused" if item.get("paused") else ("yes" if item["enabled"] else "no"),
            _filters_cell(item.get("filters") or {}),
            when(item.get("last_fire_at"), empty="never"),
            when(item.get("next_fire_at")),
            "yes" if item.get("running") else "no",
            str(item.get("runs", 0)),
            str(item.get("skips", 0)),
            str(item.get("misfires", 0)),
        ]
        for item in schedules
    ]
    return table(columns, rows, width)


def runs_table(runs: Sequence[RunView], width: int) -> str:
    """`runs`: the batches, newest first as the daemon sends them."""
    columns = (
        Column("ID", max_width=36),
        Column("Action", max_width=7),
        Column("Trigger", max_width=9),
        Column("Schedule", optional=True, shrink=True, max_width=20),
        Column("Status", max_width=11),
        Column("Started", max_width=19),
        Column("Completed", max_width=19),
        Column("Syncs", right=True, max_width=6),
        Column("Running", right=True, max_width=7),
        Column("Successful", right=True, max_width=10),
        Column("Failed", right=True, max_width=6),
        Column("Records", right=True, max_width=10),
    )
    rows = [
        [
            item["id"],
            item["action"],
            item["trigger"],
            item.get("schedule_name") or "-",
            item["status"],
            when(item["started_at"]),
            "Running" if item.get("completed_at") is None else when(item["completed_at"]),
            str(item["total_syncs"]),
            str(item["running_syncs"]),
            str(item["successful_syncs"]),
            str(item["failed_syncs"]),
            str(item["records_processed"]),
        ]
        for item in runs
    ]
    return table(columns, rows, width)


def report_text(report: Report, width: int) -> str:
    """`report`: per company, environment and data type over the window, then the summary."""
    header = f"Report of the last {report['hours']:g} hours (since {when(report['since'])})"
    if not report["rows"]:
        return "\n".join([header, "", NO_SYNCS, status_summary(report["summary"], 0)])
    columns = (
        Column("Company", shrink=True, max_width=30, min_width=10),
        Column("Environment", max_width=11),
        Column("Data Type", max_width=9),
        Column("Syncs", right=True, max_width=6),
        Column("Completed", right=True, max_width=9),
        Column("Failed", right=True, max_width=6),
        Column("Records", right=True, max_width=10),
        Column("Rec. Failed", right=True, max_width=11),
        Column("Last Status", max_width=11),
        Column("Last Success", max_width=19),
        Column("Last Error", optional=True, shrink=True, max_width=50, min_width=15),
    )
    rows = [
        [
            row["company"],
            row["environment"],
            row["data_type"],
            str(row["syncs"]),
            str(row["completed"]),
            str(row["failed"]),
            str(row["records_processed"]),
            str(row["records_failed"]),
            row.get("last_status") or "-",
            when(row.get("last_success_at"), empty="never"),
            row.get("last_error") or "",
        ]
        for row in report["rows"]
    ]
    summary = status_summary(report["summary"], report["summary"]["total_syncs"])
    return "\n".join([header, "", table(columns, rows, width), summary])


def health_text(health: Health) -> str:
    """`health`."""
    return _pairs(
        [
            ("Status", health["status"]),
            ("Version", health["version"]),
            ("Instance", health["instance"]),
            ("PID", str(health["pid"])),
            ("Uptime", duration(health["uptime_seconds"])),
            ("Database", health["database"]),
            ("Running syncs", str(health["running_syncs"])),
            ("Running runs", str(health["running_runs"])),
            *(
                [("Loops", ", ".join(f"{k} {v}" for k, v in health["loops"].items()))]
                if health.get("loops")
                else []
            ),
            *(("Problem", problem) for problem in health.get("problems", [])),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Live progress of a streamed run


@dataclass
class _Live:
    company: str
    environment: str
    data_type: str
    mode: str
    started: float
    records: int = 0
    failed: int = 0
    pages: int = 0
    rate: float | None = None
    printed_at: float = 0.0
    ticks: int = 0

    @property
    def label(self) -> str:
        return sync_label(self.company, self.environment, self.data_type)


def _key(event: Mapping[str, Any]) -> tuple[str, str]:
    return (str(event.get("credential_id")), str(event.get("data_type")))


class Progress:
    """Receives the run's events; `lines` go to `out` in order, live state as the subclass shows it.

    The base shows nothing live: it is what `--json-output` uses when stderr is not a terminal.
    """

    def __init__(self, out: TextIO | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        # Keyed by (credential id, data type): `sync.started` has no sync id yet, and a run syncs
        # each pair at most once.
        self.live: dict[tuple[str, str], _Live] = {}

    def line(self, text: str) -> None:
        """A permanent line (found, finished, skipped, summary)."""
        if self.out is not None:
            self.out.write(text + "\n")
            self.out.flush()

    def started(self, event: Mapping[str, Any]) -> None:
        """`sync.started`."""
        self.live[_key(event)] = _Live(
            company=str(event.get("company", "?")),
            environment=str(event.get("environment", "?")),
            data_type=str(event.get("data_type", "?")),
            mode=str(event.get("mode", "")),
            started=self.clock(),
        )

    def progress(self, event: Mapping[str, Any]) -> None:
        """`sync.progress`."""
        key = _key(event)
        live = self.live.get(key)
        if live is None:
            self.started(event)
            live = self.live[key]
        live.records = int(event.get("records_processed") or 0)
        live.failed = int(event.get("records_failed") or 0)
        live.pages = int(event.get("pages") or 0)
        rate = event.get("rate")
        live.rate = float(rate) if isinstance(rate, int | float) else None
        live.ticks += 1

    def finished(self, sync: SyncView) -> None:
        """`sync.finished`: forget the live line, print the contract line."""
        self.live.pop(_key(sync), None)
        self.line(finished_line(sync))

    def refresh(self) -> None:
        """Called about once a second so elapsed times move between events."""

    def close(self) -> None:
        """The stream ended (or was interrupted): leave the terminal clean."""

    def status_of(self, live: _Live) -> str:
        """`<company> (<env>, <type>): N records, P pages, R records/s, elapsed`."""
        rate = f"{live.rate:.1f} records/s" if live.rate is not None else "- records/s"
        failed = f", {live.failed} failed" if live.failed else ""
        return (
            f"{live.label}: {live.records} records{failed}, {live.pages} pages, {rate}, "
            f"{duration(self.clock() - live.started)}"
        )


class PlainProgress(Progress):
    """Not a terminal: plain lines (a start line, then at most one progress line per interval)."""

    def __init__(
        self,
        out: TextIO | None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 5.0,
    ) -> None:
        super().__init__(out, clock)
        self.interval = interval

    def started(self, event: Mapping[str, Any]) -> None:
        super().started(event)
        live = self.live[_key(event)]
        mode = f" ({live.mode})" if live.mode else ""
        self.line(f"Started sync for {live.label}{mode}")

    def progress(self, event: Mapping[str, Any]) -> None:
        super().progress(event)
        live = self.live[_key(event)]
        now = self.clock()
        if live.ticks == 1 or now - live.printed_at >= self.interval:
            live.printed_at = now
            self.line("  " + self.status_of(live))


SPINNER = "|/-\\"


class TtyProgress(Progress):
    """A terminal: one line per running sync, redrawn in place below the permanent lines."""

    def __init__(
        self,
        out: TextIO,
        width: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(out, clock)
        self.width = width
        self.drawn = 0

    def _clear(self) -> None:
        assert self.out is not None
        if self.drawn:
            # Up to the first live line, then erase everything below the cursor.
            self.out.write(f"\x1b[{self.drawn}F\r\x1b[J")
            self.drawn = 0

    def _draw(self) -> None:
        assert self.out is not None
        columns = max(20, self.width() - 1)
        for live in self.live.values():
            spin = SPINNER[live.ticks % len(SPINNER)]
            self.out.write("\r" + truncate(f"{spin} {self.status_of(live)}", columns) + "\x1b[K\n")
            self.drawn += 1
        self.out.flush()

    def line(self, text: str) -> None:
        assert self.out is not None
        self._clear()
        self.out.write(text + "\n")
        self._draw()

    def started(self, event: Mapping[str, Any]) -> None:
        super().started(event)
        self.refresh()

    def progress(self, event: Mapping[str, Any]) -> None:
        super().progress(event)
        self.refresh()

    def refresh(self) -> None:
        self._clear()
        self._draw()

    def close(self) -> None:
        if self.out is not None:
            self._clear()
            self.out.flush()
        self.live.clear()
