"""Crontab expressions as APScheduler triggers.

Crontab weekdays count from Sunday=0 while APScheduler's count from Monday=0, so numeric weekdays are
translated to names before they reach APScheduler, and every trigger gets an explicit time zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _weekday_part(part: str) -> str:
    step = ""
    if "/" in part:
        part, step_value = part.split("/", 1)
        step = f"/{step_value}"
    if part == "*" or not re.fullmatch(r"\d+(-\d+)?", part):
        return part + step
    low, _, high = part.partition("-")
    start, end = int(low), int(high or low)
    if not (0 <= start <= 7 and 0 <= end <= 7 and start <= end):
        raise ValueError(f"weekday {part!r} is out of range 0-7")
    days = list(range(start, end + 1))[:: int(step[1:]) if step else 1]
    return ",".join(dict.fromkeys(_DAY_NAMES[d] for d in days))


def translate_weekdays(field: str) -> str:
    """Crontab weekdays (0 or 7 = Sunday) as APScheduler day names."""
    return ",".join(_weekday_part(part) for part in field.lower().split(","))


def build_trigger(cron: str, timezone: str) -> CronTrigger:
    """A trigger from 5 crontab fields (or 6, seconds first), always with an explicit zone."""
    fields = cron.split()
    if len(fields) == 5:
        second, (minute, hour, day, month, weekday) = "0", fields
    elif len(fields) == 6:
        second, minute, hour, day, month, weekday = fields
    else:
        raise ValueError("must have 5 fields: minute hour day-of-month month day-of-week")
    return CronTrigger(
        second=second,
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=translate_weekdays(weekday),
        timezone=ZoneInfo(timezone),
    )


def nominal_fire_time(trigger: CronTrigger, now: datetime, lookback: timedelta) -> datetime:
    """The latest tick at or before `now`: the same on every host despite a few seconds of skew."""
    candidate = trigger.get_next_fire_time(None, now - lookback)
    latest: datetime | None = None
    while candidate is not None and candidate <= now:
        latest = candidate
        candidate = trigger.get_next_fire_time(candidate, candidate + timedelta(microseconds=1))
    return (latest or now.replace(microsecond=0)).astimezone(UTC)
