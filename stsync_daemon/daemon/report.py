"""The report of the last N hours: per credential and data type, for operators and the daily log."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from ..control.protocol import Report, ReportRow, StatusQuery
from ..logs import log_event
from ..store.sql import QUERIES
from .views import iso, summarize

logger = logging.getLogger(__name__)


async def build_report(pool: asyncpg.Pool, hours: float) -> Report:
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
        for r in await pool.fetch(QUERIES["report_rows"], since)
    ]
    query = StatusQuery()
    stats = await pool.fetch(QUERIES["summarize_syncs"], query.company_id, False, False, since)
    dead = await pool.fetchval(QUERIES["count_open_dead_letters"], query.company_id)
    return {
        "generated_at": iso(now) or "",
        "since": iso(since) or "",
        "hours": hours,
        "rows": rows,
        "summary": summarize(stats, dead_letters=dead),
    }


def format_report(report: Report) -> list[str]:
    """The report as an aligned text table (one string per line)."""
    header = (
        "Company",
        "Environment",
        "Data Type",
        "Syncs",
        "OK",
        "Failed",
        "Records",
        "Last Success",
    )
    table = [header] + [
        (
            r["company"],
            r["environment"],
            r["data_type"],
            str(r["syncs"]),
            str(r["completed"]),
            str(r["failed"]),
            str(r["records_processed"]),
            r["last_success_at"] or "never",
        )
        for r in report["rows"]
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        f"stsync report: {report['since']} .. {report['generated_at']} ({report['hours']:g} h)"
    ]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table
    ]
    s = report["summary"]
    rate = "n/a" if s["success_rate"] is None else f"{s['success_rate'] * 100:.1f}%"
    lines.append(
        f"{s['total_syncs']} syncs, success rate {rate}, {s['total_records_processed']} records"
    )
    return lines


def log_report(report: Report) -> None:
    """Write the report to the log: the table line by line, then one JSON line."""
    for line in format_report(report):
        log_event(logger, logging.INFO, "report.line", text=line)
    log_event(logger, logging.INFO, "report", report=orjson.loads(orjson.dumps(report)))
