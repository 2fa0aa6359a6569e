"""Time as ServiceTitan serves it: 100 ns ticks (as .NET stores them), formatted with trimmed fractions.

Integers keep ordering exact and cheap; strings are built only when a record is rendered.
"""

from __future__ import annotations

import re
import time
from calendar import timegm

TICKS_PER_SECOND = 10_000_000
TICKS_PER_MS = 10_000

_DATE_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"(Z|z|[+-]\d{2}:?\d{2})?$"
)


def now_ticks() -> int:
    """The current UTC time in ticks since the Unix epoch."""
    return time.time_ns() // 100


_TWO = [f"{i:02d}" for i in range(100)]
_HOUR_MINUTE = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
_DAYS: dict[int, str] = {}


def _day_prefix(day: int) -> str:
    tm = time.gmtime(day * 86_400)
    prefix = f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
    if len(_DAYS) >= 100_000:  # 270 years of days; bounded anyway
        _DAYS.clear()
    _DAYS[day] = prefix
    return prefix


def format_ticks(ticks: int) -> str:
    """`2021-07-19T20:35:38.2876004Z`: like Newtonsoft's default, trailing zeros of the fraction dropped.

    Every served record carries two of these, so it is built from tables rather than strftime.
    """
    seconds, frac = divmod(ticks, TICKS_PER_SECOND)
    day, second = divmod(seconds, 86_400)
    minute, second = divmod(second, 60)
    head = _DAYS.get(day) or _day_prefix(day)
    if frac:
        fraction = str(frac + TICKS_PER_SECOND)[1:].rstrip("0")
        return f"{head}{_HOUR_MINUTE[minute]}{_TWO[second]}.{fraction}Z"
    return f"{head}{_HOUR_MINUTE[minute]}{_TWO[second]}Z"


def looks_like_date(value: str) -> bool:
    """Whether a `from` value is a date rather than a continuation token."""
    return _DATE_RE.match(value) is not None


def parse_datetime(value: str) -> int:
    """A date or ISO date-time (UTC unless an offset is given) to ticks; ValueError if malformed."""
    match = _DATE_RE.match(value.strip())
    if match is None:
        raise ValueError(f"not a date: {value!r}")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        seconds = timegm(
            (
                int(year),
                int(month),
                int(day),
                int(hour or 0),
                int(minute or 0),
                int(second or 0),
                0,
                0,
                0,
            )
        )
        time.strptime(f"{year}-{month}-{day}", "%Y-%m-%d")  # rejects 2021-02-30
    except (ValueError, OverflowError):
        raise ValueError(f"not a date: {value!r}") from None
    if int(hour or 0) > 23 or int(minute or 0) > 59 or int(second or 0) > 60:
        raise ValueError(f"not a date: {value!r}")
    ticks = seconds * TICKS_PER_SECOND + (int((frac or "")[:7].ljust(7, "0")) if frac else 0)
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:]) * 60
        ticks -= sign * offset * TICKS_PER_SECOND
    return ticks
