"""Crontab expressions as APScheduler triggers, with the meaning classic (Vixie) cron gives them.

APScheduler 3.x's own cron syntax differs from crontab in two ways that move fire times, so each
field is parsed here into the set of values cron would match and APScheduler only sees explicit lists:
- weekdays: crontab counts 0 (or 7) = Sunday, APScheduler 0 = Monday; weekdays reach it as names.
- day of month and day of week: cron fires when EITHER matches if both fields are restricted (neither
  starts with `*`), and when both match otherwise; APScheduler always wants both. The OR becomes two
  triggers under an `OrTrigger`.
Every trigger gets an explicit time zone.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# APScheduler's weekday names, indexed by crontab's number (0 and 7 are Sunday).
_APS_DAY_NAMES = (*_CRON_WEEKDAYS, "sun")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    names_start: int = 0


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY = _Field("day of month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTHS, 1)
_WEEKDAY = _Field("day of week", 0, 7, _CRON_WEEKDAYS, 0)
_ELEMENT = re.compile(r"(?P<range>\*|(?P<first>\w+)(?:-(?P<last>\w+))?)(?:/(?P<step>\w+))?")


@dataclass(frozen=True)
class CronExpression:
    """A parsed crontab line: the values each field matches, and which day fields were `*…`."""

    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # crontab numbering, 0 = Sunday (7 folded into 0)
    days_star: bool
    weekdays_star: bool

    @property
    def days_or_weekdays(self) -> bool:
        """Cron's rule: both day fields restricted means a day matching either one fires."""
        return not (self.days_star or self.weekdays_star)


def _value(text: str, field: _Field) -> int:
    lowered = text.lower()
    if lowered in field.names:
        return field.names.index(lowered) + field.names_start
    if not text.isdigit():
        known = f" or a name ({', '.join(field.names)})" if field.names else ""
        raise ValueError(f"{field.name} {text!r} is not a number{known}")
    value = int(text)
    if not field.low <= value <= field.high:
        raise ValueError(f"{field.name} {value} is out of range {field.low}-{field.high}")
    return value


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for element in text.split(","):
        match = _ELEMENT.fullmatch(element)
        if match is None:
            raise ValueError(f"{field.name} {element!r} is not valid crontab syntax")
        if match["range"] == "*":
            first, last = field.low, field.high
        else:
            first = _value(match["first"], field)
            last = first if match["last"] is None else _value(match["last"], field)
            if match["step"] is not None and match["last"] is None:
                raise ValueError(
                    f"{field.name} {element!r}: a step needs a range or * "
                    f"(write {match['first']}-{field.high}/{match['step']})"
                )
            if first > last:
                raise ValueError(f"{field.name} range {element!r} runs backwards")
        step = 1
        if match["step"] is not None:
            if not match["step"].isdigit() or int(match["step"]) == 0:
                raise ValueError(f"{field.name} step in {element!r} must be a positive number")
            step = int(match["step"])
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse(cron: str) -> CronExpression:
    """Five crontab fields (or six, seconds first); raises ValueError naming the bad field."""
    fields = cron.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ValueError("must have 5 fields: minute hour day-of-month month day-of-week")
    second, minute, hour, day, month, weekday = fields
    parsed = CronExpression(
        seconds=_parse_field(second, _SECOND),
        minutes=_parse_field(minute, _MINUTE),
        hours=_parse_field(hour, _HOUR),
        days=_parse_field(day, _DAY),
        months=_parse_field(month, _MONTH),
        weekdays=frozenset(d % 7 for d in _parse_field(weekday, _WEEKDAY)),
        days_star=day.startswith("*"),
        weekdays_star=weekday.startswith("*"),
    )
    if not parsed.days_or_weekdays and not any(
        day <= _longest_month(month) for day in parsed.days for month in parsed.months
    ):
        raise ValueError(f"day of month {day!r} never occurs in month {month!r}, so it never fires")
    return parsed


def _longest_month(month: int) -> int:
    return calendar.monthrange(2000, month)[1]  # a leap year: February has its 29th


def _listed(values: frozenset[int], field: _Field) -> str:
    full = set(range(field.low, field.high + 1))
    return "*" if values >= full else ",".join(str(v) for v in sorted(values))


def _weekday_names(weekdays: frozenset[int]) -> str:
    return "*" if len(weekdays) == 7 else ",".join(_APS_DAY_NAMES[d] for d in sorted(weekdays))


class CrontabTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler is untyped
    """The APScheduler trigger of a crontab line, with cron's handling of the hour skipped in spring.

    A tick whose wall-clock time does not exist (the clock jumps over it) fires once, when the clock
    jumps, as cron runs it; APScheduler alone would move it by the size of the jump (02:30 -> 03:30).
    A wall time repeated in autumn fires at each occurrence (as croniter, and cron for `*` fields).
    """

    __slots__ = ("_inner", "_zone", "cron")

    def __init__(self, cron: str, inner: BaseTrigger, zone: ZoneInfo) -> None:
        self.cron = cron
        self._inner = inner
        self._zone = zone

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The next tick after `previous_fire_time` and at or after `now`, None if there is none."""
        # APScheduler handed UTC times near the repeated hour can return the same tick again (its
        # local arithmetic drops `fold`); times in the trigger's own zone carry the right fold.
        if previous_fire_time is not None:
            previous_fire_time = previous_fire_time.astimezone(self._zone)
        now = now.astimezone(self._zone)
        candidate: datetime | None = self._inner.get_next_fire_time(previous_fire_time, now)
        while candidate is not None:
            wall = candidate.replace(tzinfo=None, fold=0)
            before = wall.replace(tzinfo=self._zone)
            after = wall.replace(tzinfo=self._zone, fold=1)
            if (
                before.utcoffset() == after.utcoffset()
                or before.astimezone(UTC).astimezone(self._zone).replace(tzinfo=None) == wall
            ):
                return candidate
            # The clock jumped over this wall time: fire when it jumped, once.
            jump = _gap_end(before, after, self._zone)
            # Instants, not wall times: aware times in one zone compare by wall clock.
            if previous_fire_time is None or jump.timestamp() > previous_fire_time.timestamp():
                return jump
            candidate = self._inner.get_next_fire_time(jump, jump + _TICK)
        return None

    def __str__(self) -> str:
        return f"crontab[{self.cron}]"

    def __repr__(self) -> str:
        return f"<CrontabTrigger {self.cron!r} timezone={self._zone.key!r}>"


_TICK = timedelta(microseconds=1)


def _gap_end(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The instant the clock jumped over a skipped wall time (`after` is earlier in UTC)."""
    low, high = int(after.timestamp()), int(before.timestamp())
    target = after.utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, zone)


def build_trigger(cron: str, timezone: str) -> CrontabTrigger:
    """A trigger firing exactly when cron would (in `timezone`); raises ValueError if invalid."""
    expression = parse(cron)
    zone = ZoneInfo(timezone)

    def trigger(days: str, weekdays: str) -> CronTrigger:
        return CronTrigger(
            year="*",
            month=_listed(expression.months, _MONTH),
            day=days,
            week="*",
            day_of_week=weekdays,
            hour=_listed(expression.hours, _HOUR),
            minute=_listed(expression.minutes, _MINUTE),
            second=_listed(expression.seconds, _SECOND),
            timezone=zone,
        )

    days = _listed(expression.days, _DAY)
    weekdays = _weekday_names(expression.weekdays)
    inner: BaseTrigger = (
        OrTrigger([trigger(days, "*"), trigger("*", weekdays)])
        if expression.days_or_weekdays
        else trigger(days, weekdays)
    )
    return CrontabTrigger(cron, inner, zone)


def nominal_fire_time(trigger: BaseTrigger, now: datetime, lookback: timedelta) -> datetime:
    """The latest tick at or before `now`: the same on every host despite a few seconds of skew."""
    candidate = trigger.get_next_fire_time(None, now - lookback)
    latest: datetime | None = None
    while candidate is not None and candidate <= now:
        latest = candidate
        candidate = trigger.get_next_fire_time(candidate, candidate + timedelta(microseconds=1))
    return (latest or now.replace(microsecond=0)).astimezone(UTC)
