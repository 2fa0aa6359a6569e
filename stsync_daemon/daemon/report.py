"""The report of the last N hours as the daily log shows it (the store builds it: `SyncStore.report`)."""

from __future__ import annotations

import logging

import orjson

from ..logs import log_event
from ..views import Report

logger = logging.getLogger(__name__)


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
