"""Schedules fire when cron would: crontab weekdays, the day-of-month OR day-of-week rule, DST.

croniter is the reference implementation. It is asked for Vixie cron's rule on the day fields
(`implement_cron_bug=True`): a day field that starts with `*` (such as `*/2`) counts as unrestricted,
so the two day fields are then ANDed, as cron and cronie do.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from stsync_daemon.cron import build_trigger, nominal_fire_time, parse

NEW_YORK = ZoneInfo("America/New_York")


def fire_times(cron: str, start: datetime, count: int, timezone: str = "UTC") -> list[datetime]:
    """Successive fire times, asked as APScheduler's scheduler asks (UTC times, previous tick)."""
    trigger = build_trigger(cron, timezone)
    times: list[datetime] = []
    previous: datetime | None = None
    now = start.astimezone(UTC)
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)
        assert fire is not None, cron
        times.append(fire.astimezone(UTC))
        previous = now = fire.astimezone(UTC)
    return times


def reference_times(
    cron: str, start: datetime, count: int, timezone: str = "UTC"
) -> list[datetime]:
    it = croniter(cron, start.astimezone(ZoneInfo(timezone)), implement_cron_bug=True)
    return [it.get_next(datetime).astimezone(UTC) for _ in range(count)]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # The 1st of the month OR any Monday (January 2025 starts on a Wednesday).
    days = [t.date().isoformat() for t in fire_times("0 0 1 * mon", utc(2024, 12, 31, 12), 7)]
    assert days == [
        "2025-01-01",
        "2025-01-06",
        "2025-01-13",
        "2025-01-20",
        "2025-01-27",
        "2025-02-01",
        "2025-02-03",
    ]
    # A day field starting with `*` is unrestricted, so the days must match both (Vixie cron).
    days = [t.date().isoformat() for t in fire_times("0 0 */2 * mon", utc(2025, 1, 1), 3)]
    assert days == ["2025-01-13", "2025-01-27", "2025-02-03"]
    # One side that never happens leaves the other: the 30th of February OR Mondays.
    assert fire_times("0 0 30 2 mon", utc(2025, 2, 1), 1) == [utc(2025, 2, 3)]


@pytest.mark.parametrize(
    ("weekday", "days"),
    [
        ("*/2", {"Sun", "Tue", "Thu", "Sat"}),
        ("1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("mon-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("MON-Fri/2", {"Mon", "Wed", "Fri"}),
        ("0,6", {"Sun", "Sat"}),
        ("5-7", {"Fri", "Sat", "Sun"}),
        ("sun", {"Sun"}),
        ("0", {"Sun"}),
        ("7", {"Sun"}),
        ("5-5", {"Fri"}),
        ("sat,sun", {"Sat", "Sun"}),
        ("*/3", {"Sun", "Wed", "Sat"}),
    ],
)
def test_weekdays_count_from_sunday(weekday: str, days: set[str]) -> None:
    times = fire_times(f"0 12 * * {weekday}", utc(2025, 3, 1), 14)
    assert {t.strftime("%a") for t in times} == days
    assert all(t.hour == 12 and t.minute == 0 for t in times)


def test_minutes_hours_and_month_names() -> None:
    minutes = fire_times("*/15 * * * *", utc(2025, 1, 1, 0, 0, 30), 4)
    assert [t.minute for t in minutes] == [15, 30, 45, 0]
    months = fire_times("0 6 1 jan,Jul-aug *", utc(2025, 2, 1), 4)
    assert [(t.year, t.month) for t in months] == [(2025, 7), (2025, 8), (2026, 1), (2026, 7)]
    seconds = fire_times("*/20 * * * * *", utc(2025, 1, 1, 0, 0, 1), 3)
    assert [t.second for t in seconds] == [20, 40, 0]


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("* * * *", "must have 5 fields"),
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 0 * * 8", "day of week 8 is out of range 0-7"),
        ("0 0 * * monday", "day of week 'monday' is not a number or a name"),
        ("0 0 * foo *", "month 'foo'"),
        ("5/15 * * * *", "write 5-59/15"),
        ("0 0 * * fri-mon", "runs backwards"),
        ("*/0 * * * *", "step"),
        ("0 0 1,,2 * *", "not valid crontab syntax"),
        ("0 0 L * *", "day of month 'L' is not a number"),
        ("0 0 31 2,4 *", "never fires"),
    ],
)
def test_invalid_expressions_say_what_is_wrong(cron: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_trigger(cron, "UTC")


def test_the_hour_skipped_in_spring_fires_once_when_the_clock_jumps() -> None:
    # New York, 2025-03-09: 02:00 EST jumps to 03:00 EDT (07:00 UTC); cron runs 02:30 at the jump.
    start = datetime(2025, 3, 8, 12, tzinfo=NEW_YORK)
    spring = fire_times("30 2 * * *", start, 2, "America/New_York")
    assert spring == [utc(2025, 3, 9, 7), utc(2025, 3, 10, 6, 30)]
    assert spring == reference_times("30 2 * * *", start, 2, "America/New_York")
    every = fire_times("*/20 2 * * *", start, 2, "America/New_York")
    assert every == [utc(2025, 3, 9, 7), utc(2025, 3, 10, 6)]
    # The repeated hour in autumn fires at each occurrence of the wall time.
    autumn = fire_times(
        "30 1 * * *", datetime(2025, 11, 1, 12, tzinfo=NEW_YORK), 2, "America/New_York"
    )
    assert autumn == [utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 6, 30)]


def _element(rng: random.Random, low: int, high: int, names: tuple[str, ...] = ()) -> str:
    kind = rng.random()
    if kind < 0.12:
        return "*"
    if kind < 0.25:
        return f"*/{rng.randint(1, high - low + 1)}"
    first = rng.randint(low, high - 1)
    # croniter reads a weekday range such as `5-5` as every day, so ranges here are proper.
    last = rng.randint(first + 1, high)

    def show(value: int) -> str:
        if names and rng.random() < 0.3 and value - low < len(names):
            return names[value - low]
        return str(value)

    if kind < 0.55:
        return show(first)
    if kind < 0.8:
        return f"{show(first)}-{show(last)}"
    return f"{show(first)}-{show(last)}/{rng.randint(1, 5)}"


def _field(
    rng: random.Random, low: int, high: int, *, day: bool = False, names: tuple[str, ...] = ()
) -> str:
    parts = [_element(rng, low, high, names) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    if day:
        # Where `*` stands in a day field decides cron's OR; croniter only looks at the first
        # element there (so does cron), but sorts a later plain `*` first: keep `*` first.
        parts = parts[:1] + [p for p in parts[1:] if not p.startswith("*")]
    return ",".join(parts)


def random_cron(rng: random.Random) -> str:
    months = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    weekdays = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
    fields = [
        _field(rng, 0, 59),
        _field(rng, 0, 23),
        _field(rng, 1, 31, day=True),
        _field(rng, 1, 12, names=months),
        _field(rng, 0, 7, day=True, names=weekdays),
    ]
    return " ".join(fields)


# Days around New York's clock changes, where a DST zone differs from UTC.
_TRANSITIONS = [utc(2024, 3, 10, 7), utc(2024, 11, 3, 6), utc(2025, 3, 9, 7), utc(2025, 11, 2, 6)]


@pytest.mark.parametrize("timezone", ["UTC", "America/New_York"])
def test_fire_times_match_croniter_for_generated_expressions(timezone: str) -> None:
    rng = random.Random(f"stsync-cron-{timezone}")
    compared = 0
    while compared < 400:
        cron = random_cron(rng)
        try:
            parse(cron)
        except ValueError:
            continue  # e.g. the 31st of months that have none: refused, and never fires in cron
        if timezone != "UTC" and rng.random() < 0.5:
            start = rng.choice(_TRANSITIONS) + timedelta(seconds=rng.randint(-2 * 86400, 86400))
        else:
            start = utc(2024, 1, 1) + timedelta(seconds=rng.randint(0, 3 * 365 * 86400))
        start += timedelta(
            microseconds=500_000
        )  # croniter excludes the start, APScheduler includes it
        expected = reference_times(cron, start, 6, timezone)
        assert fire_times(cron, start, 6, timezone) == expected, (cron, timezone, start)
        compared += 1


def test_nominal_fire_time_is_the_tick_just_passed_whichever_day_field_matched() -> None:
    trigger = build_trigger("0 0 1 * mon", "UTC")
    lookback = timedelta(seconds=301)
    # A Monday that is not the 1st: the day-of-week side of the OR fired.
    assert nominal_fire_time(trigger, utc(2025, 1, 6, 0, 0, 3), lookback) == utc(2025, 1, 6)
    # The 1st, a Saturday: the day-of-month side fired.
    assert nominal_fire_time(trigger, utc(2025, 2, 1, 0, 4), lookback) == utc(2025, 2, 1)
    # The clock jumped over 02:30 in New York: the tick is the moment it jumped.
    jumped = build_trigger("30 2 * * *", "America/New_York")
    assert nominal_fire_time(jumped, utc(2025, 3, 9, 7, 0, 2), lookback) == utc(2025, 3, 9, 7)


def test_readme_and_example_config_say_what_the_trigger_does() -> None:
    root = Path(__file__).resolve().parent.parent
    for path in (root / "README.md", root / "config" / "stsync.example.toml"):
        text = " ".join(re.sub(r"(?m)^#", "", path.read_text()).split())
        assert "0 or 7 = Sunday" in text or "0 or 7 is Sunday" in text, path
        assert "`*/2` is Sunday, Tuesday, Thursday, Saturday" in text or (
            "`*/2` means Sunday, Tuesday, Thursday, Saturday" in text
        ), path
        assert "neither starts with `*`" in text and "0 0 1 * mon" in text, path
    # ... and the trigger does what they say.
    assert {t.strftime("%a") for t in fire_times("0 0 * * */2", utc(2025, 1, 1), 8)} == {
        "Sun",
        "Tue",
        "Thu",
        "Sat",
    }
