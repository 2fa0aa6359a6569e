"""A proactive per-(app key, tenant) limiter, so ServiceTitan rarely has to answer 429."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """Spaces requests `1/rate` seconds apart, so no 1-second window holds more than `rate` of them.

    Slots are reserved synchronously (no lock needed on one event loop), so concurrent callers queue
    in arrival order. A cancelled waiter wastes its slot, which only errs on the safe side. A waiter
    that wakes too soon after the last request actually sent (a busy event loop woke several late
    waiters at once) waits out the gap, so a stall never turns into a burst.
    """

    def __init__(self, requests_per_second: float, *, clock: Clock, sleep: Sleep) -> None:
        if requests_per_second <= 0:
            raise ValueError("requests_per_second must be positive")
        # A hair over 1/rate, so float rounding never fits rate + 1 requests into one second.
        self._interval = (1.0 + 1e-9) / requests_per_second
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf
        self._last = -math.inf

    async def acquire(self) -> float:
        """Wait for this request's slot; returns the seconds it was planned to wait (0 when none)."""
        start = now = self._clock()
        slot = max(start, self._next)
        self._next = slot + self._interval
        # Spacing is checked against the last request actually sent, not only the schedule.
        while (wait := max(slot, self._last + self._interval * 0.999) - now) > 0:
            await self._sleep(wait)
            now = self._clock()
        self._last = now
        return max(0.0, slot - start)

    def hold_until(self, when: float) -> None:
        """Make every later request of this tenant wait until `when` (ServiceTitan said 429)."""
        self._next = max(self._next, when)
