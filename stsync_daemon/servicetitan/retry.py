"""How long to wait before trying again, and how ServiceTitan says how long."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

_SECONDS_IN_TITLE = re.compile(r"(\d+(?:\.\d+)?)\s*sec", re.IGNORECASE)


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff bounded by attempts and total time."""

    max_attempts: int
    max_total_seconds: float
    base_delay: float = 1.0
    max_delay: float = 60.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay after the `attempt`-th failure (1-based): doubling, capped, jittered in [½, 1]."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return ceiling * rng.uniform(0.5, 1.0)

    def honour(self, retry_after: float, rng: random.Random) -> float:
        """Delay for a server-given `Retry-After`: never shorter, jittered so tenants spread."""
        return retry_after + rng.uniform(0.0, max(0.1, 0.1 * retry_after))


def parse_retry_after(header: str | None, title: str | None) -> float | None:
    """Seconds from `Retry-After` (seconds or HTTP date), else from "… N seconds" in the title."""
    if header:
        value = header.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
    if title:
        match = _SECONDS_IN_TITLE.search(title)
        if match:
            return float(match.group(1))
    return None
