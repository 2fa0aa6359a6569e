"""Unit tests of stsyncctl's human output: tables, summaries, the contract messages, progress."""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Iterator

import pytest

from stsync_daemon.cli import render

from .fake_daemon import (
    ALL_SYNCS,
    FAILED_SYNC,
    RUNNING_SYNC,
    SCHEDULE,
    credential_view,
    dead_letter,
    plan_item,
    run_summary,
    status_summary,
    sync_view,
)


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Render times in UTC so expectations are fixed."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_contract_messages() -> None:
    assert render.finished_line(sync_view()) == (
        "Completed sync for Acme HVAC (production, customers): 1500 records processed"
    )
    assert render.finished_line(FAILED_SYNC) == (
        "Sync failed for Bolt Plumbing (integration, invoices): ServiceTitan rejected the client "
        "id or secret: check them with `stsyncctl credentials test`"
    )
    assert render.found_line("process", 3, 6) == "Found 3 credentials to process"
    assert render.found_line("process", 0, 0) == "No credentials found matching the criteria"
    assert render.found_line("retry", 2, 4) == "Found 4 failed syncs to retry"
    assert render.NO_SYNCS == "No sync operations found matching the criteria"


def test_timed_out_sync_says_what_was_kept() -> None:
    line = render.finished_line(
        sync_view(status="timed_out", error_message=None, records_processed=800)
    )
    assert line.startswith("Sync failed for Acme HVAC (production, customers): timed out")
    assert "800 records were committed" in line


def test_status_table_columns_wide_and_narrow() -> None:
    wide = render.status_table(ALL_SYNCS, 250).splitlines()
    headers = wide[0].split()
    assert headers[:2] == ["ID", "Company"]
    for name in (
        "Environment",
        "Data",
        "Status",
        "Started",
        "Completed",
        "Processed",
        "Successful",
    ):
        assert name in wide[0]
    assert wide[0].rstrip().endswith("Error")
    assert len(wide) == 1 + len(ALL_SYNCS)
    running = next(line for line in wide if RUNNING_SYNC["id"] in line)
    assert "Running" in running
    assert "2024-05-01 10:00:00" in running
    failed = next(line for line in wide if FAILED_SYNC["id"] in line)
    assert "[auth] ServiceTitan rejected" in failed

    narrow = render.status_table(ALL_SYNCS, 150).splitlines()
    assert "Environment" not in narrow[0] and "Error" not in narrow[0]
    assert "Failed" in narrow[0] and "Processed" in narrow[0]
    assert all(len(line) <= 150 for line in narrow)


def test_columns_are_aligned_and_numbers_right_aligned() -> None:
    lines = render.status_table(ALL_SYNCS, 250).splitlines()
    start = lines[0].index("Status")
    assert {line[start : start + 9].strip() for line in lines[1:]} == {
        "running",
        "completed",
        "failed",
    }
    end = lines[0].index("Processed") + len("Processed")
    assert [line[:end].split()[-1] for line in lines[1:]] == ["250", "1500", "0"]


def test_long_cells_are_truncated() -> None:
    long = sync_view(company="A" * 80)
    line = render.status_table([long], 250).splitlines()[1]
    assert "A" * 27 + "..." in line and "A" * 31 not in line
    assert render.truncate("abcdef", 5) == "ab..."
    assert render.truncate("abc", 5) == "abc"
    assert render.truncate("line\nbreak", 20) == "line break"


def test_status_summary_statistics() -> None:
    text = render.status_summary(status_summary(ALL_SYNCS), 3)
    assert "Syncs:             3 (completed 1, failed 1, running 1)" in text
    assert "Success rate:      50.0%" in text
    assert "Records processed: 1750" in text
    assert "Mean duration:     47.5s" in text
    assert "shown" not in text
    assert "2 shown" in render.status_summary(status_summary(ALL_SYNCS), 2)
    empty = render.status_summary(status_summary([]), 0)
    assert "Success rate:      -" in empty
    assert "Dead letters" not in text and "Dead letters" not in empty
    with_dead = render.status_summary(status_summary(ALL_SYNCS, dead_letters=2), 3)
    assert with_dead.splitlines()[-1] == "  Dead letters:      2 open (stsyncctl dead-letters)"


def test_dead_letter_cells_cannot_drive_the_terminal() -> None:
    assert render.printable("plain text") == "plain text"
    assert render.printable("a\x1b[31mred\x07") == "a\\x1b[31mred\\x07"
    assert render.printable("two\nlines\tand\r\nmore") == "two lines and more"
    assert render.printable("caf\u00e9 \u200b\x9b") == "caf\u00e9 \\u200b\\x9b"
    hostile = dead_letter(record_id="\x1b]0;pwned\x07", reason="\x1b[2J wiped", company="\x1bc")
    text = render.dead_letters_table([hostile], 200)
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07" in text and "\\x1b[2J wiped" in text


def test_dead_letters_count_line() -> None:
    assert render.dead_letters_count(3, 3, include_resolved=False) == (
        "3 open dead letters (showing 3)"
    )
    assert render.dead_letters_count(1, 1, include_resolved=False) == (
        "1 open dead letter (showing 1)"
    )
    assert render.dead_letters_count(120, 50, include_resolved=True) == (
        "120 dead letters (showing 50)"
    )


def test_run_summary_block() -> None:
    text = render.run_summary(run_summary([sync_view(), FAILED_SYNC]))
    assert "Syncs:             2 (1 successful, 1 failed)" in text
    assert "Records processed: 1500" in text
    assert "Execution time:    12.5s" in text
    assert "stsyncctl retry" in text
    assert "retry" not in render.run_summary(run_summary([sync_view()]))


def test_plan_with_and_without_estimates() -> None:
    plan = {
        "dry_run": True,
        "action": "process",
        "total_credentials": 1,
        "items": [
            plan_item(),
            plan_item(
                data_type="invoices",
                estimated_records=None,
                estimate_error="ServiceTitan timed out",
            ),
        ],
        "skipped": [
            {
                "credential_id": "c",
                "company_id": "9",
                "company": "Off Co",
                "environment": "production",
                "data_type": "customers",
                "reason": "disabled",
            }
        ],
        "schedules": [SCHEDULE],
    }
    text = render.plan_text(plan, 200, estimate=True)  # type: ignore[arg-type]
    assert text.splitlines()[0] == "Found 1 credentials to process"
    assert "Estimated" in text and "42" in text and "? (ServiceTitan timed out)" in text
    assert "Estimated records: 42" in text
    assert "Skipped Off Co (production, customers): disabled" in text
    assert "hourly-production (process): 2024-05-01 11:00:00" in text
    assert text.rstrip().endswith("Dry run: nothing was synced or written.")
    plain = render.plan_text(plan, 200, estimate=False)  # type: ignore[arg-type]
    assert "Estimated" not in plain
    empty = dict(plan, items=[], total_credentials=0, skipped=[])
    assert render.plan_text(empty, 200, estimate=False).startswith(  # type: ignore[arg-type]
        "No credentials found matching the criteria"
    )


def test_credentials_never_show_a_secret() -> None:
    detail = render.credential_detail(credential_view())
    assert (
        "Client secret: (set, never shown)" in detail.replace("  ", " ") or "never shown" in detail
    )
    assert "Last success (customers): 2024-05-01 10:01:30" in detail
    assert "Last success (invoices):  never" in detail
    table = render.credentials_table([credential_view()], 200)
    assert "Acme HVAC" in table and "production" in table


def test_schedules_runs_report_health() -> None:
    schedules = render.schedules_table([SCHEDULE], 250)
    assert "0 * * * *" in schedules and "environment=production" in schedules
    assert "2024-05-01 11:00:00" in schedules
    assert "Misfires" in schedules
    report = render.report_text(
        {
            "generated_at": "2024-05-01T08:00:00Z",
            "since": "2024-04-30T08:00:00Z",
            "hours": 24,
            "rows": [],
            "summary": status_summary([]),
        },
        200,
    )
    assert report.startswith("Report of the last 24 hours (since 2024-04-30 08:00:00)")
    assert render.NO_SYNCS in report


def test_json_is_one_document() -> None:
    text = render.dump_json({"syncs": ALL_SYNCS, "summary": status_summary(ALL_SYNCS)})
    assert json.loads(text)["summary"]["total_syncs"] == 3
    assert text.endswith("}\n")


def test_durations() -> None:
    assert render.duration(None) == "-"
    assert render.duration(12.34) == "12.3s"
    assert render.duration(187) == "3m 07s"
    assert render.duration(3725) == "1h 02m"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _event(kind: str, sync_id: str | None = None, **extra: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event": kind,
        "credential_id": "cred-a",
        "company": "Acme HVAC",
        "environment": "production",
        "data_type": "customers",
        **extra,
    }
    if sync_id:
        event["sync_id"] = sync_id
    return event


def test_plain_progress_prints_lines_at_most_once_per_interval() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = render.PlainProgress(out, clock, interval=5)
    progress.started(_event("sync.started", mode="incremental"))
    progress.progress(_event("sync.progress", "s1", records_processed=500, pages=1, rate=250.0))
    clock.now += 1
    progress.progress(_event("sync.progress", "s1", records_processed=1000, pages=2, rate=250.0))
    clock.now += 5
    progress.progress(_event("sync.progress", "s1", records_processed=1500, pages=3, rate=250.0))
    progress.finished(sync_view(credential_id="cred-a"))
    lines = out.getvalue().splitlines()
    assert lines == [
        "Started sync for Acme HVAC (production, customers) (incremental)",
        "  Acme HVAC (production, customers): 500 records, 1 pages, 250.0 records/s, 0.0s",
        "  Acme HVAC (production, customers): 1500 records, 3 pages, 250.0 records/s, 6.0s",
        "Completed sync for Acme HVAC (production, customers): 1500 records processed",
    ]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def screen(text: str) -> list[str]:
    """What a terminal shows after `text`: handles \\r, \\n, ESC[nF (up n lines), ESC[J, ESC[K."""
    rows: list[str] = [""]
    row = col = 0
    for token in re.split(r"(\x1b\[\d*[FJK]|\r|\n)", text):
        if not token:
            continue
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            if row == len(rows):
                rows.append("")
        elif token.startswith("\x1b["):
            code, count = token[-1], int(token[2:-1] or 1)
            if code == "F":
                row, col = max(0, row - count), 0
            elif code == "J":
                rows[row] = rows[row][:col]
                del rows[row + 1 :]
            elif code == "K":
                rows[row] = rows[row][:col]
        else:
            line = rows[row]
            rows[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return [line for line in rows]


def test_tty_progress_redraws_one_line_per_running_sync() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = render.TtyProgress(out, lambda: 80, clock)
    progress.line("Found 1 credentials to process")
    progress.started(_event("sync.started"))
    progress.started(_event("sync.started", data_type="invoices"))
    assert screen(out.getvalue()) == [
        "Found 1 credentials to process",
        "| Acme HVAC (production, customers): 0 records, 0 pages, - records/s, 0.0s",
        "| Acme HVAC (production, invoices): 0 records, 0 pages, - records/s, 0.0s",
        "",
    ]
    clock.now += 2
    progress.progress(_event("sync.progress", "s1", records_processed=500, pages=1, rate=9.5))
    shown = screen(out.getvalue())
    assert (
        shown[1] == "/ Acme HVAC (production, customers): 500 records, 1 pages, 9.5 records/s, 2.0s"
    )
    assert len(shown) == 4
    progress.finished(sync_view(credential_id="cred-a"))
    assert screen(out.getvalue()) == [
        "Found 1 credentials to process",
        "Completed sync for Acme HVAC (production, customers): 1500 records processed",
        "| Acme HVAC (production, invoices): 0 records, 0 pages, - records/s, 2.0s",
        "",
    ]
    progress.close()
    assert screen(out.getvalue()) == [
        "Found 1 credentials to process",
        "Completed sync for Acme HVAC (production, customers): 1500 records processed",
        "",
    ]


def test_tty_progress_lines_fit_the_terminal() -> None:
    out = io.StringIO()
    progress = render.TtyProgress(out, lambda: 40, FakeClock())
    progress.started(_event("sync.started", company="A very long company name indeed, Inc."))
    assert all(len(line) <= 39 for line in screen(out.getvalue()))
