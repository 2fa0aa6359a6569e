"""Rate limiting and request accounting.

The limiter keeps the times of accepted requests in the last second per (app key, environment, tenant),
so no 1-second window ever holds more than the limit. The peak meter does the same for every request
that arrives, so tests can assert that a client stayed under the limit on its own.
"""

from __future__ import annotations

import math
from collections import Counter, deque

from ..enums import Environment
from .models import Counters, EndpointKind, FaultKind


class RateLimiter:
    """A sliding one-second window per key."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._windows: dict[tuple[str, Environment, int], deque[float]] = {}

    def acquire(self, key: tuple[str, Environment, int], now: float) -> int | None:
        """None if the request may proceed, else the whole seconds to wait (at least 1)."""
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque()
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.per_second:
            return max(1, math.ceil(window[0] + 1.0 - now))
        window.append(now)
        return None


class Accounting:
    """Request counters by (tenant, environment, kind, status), arrival peaks, injected faults."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[int, Environment, EndpointKind, int]] = Counter()
        self.faults: Counter[tuple[int, Environment, FaultKind]] = Counter()
        self.peaks: dict[tuple[int, Environment], int] = {}
        self._arrivals: dict[tuple[int, Environment], deque[float]] = {}

    def arrive(self, tenant_id: int, environment: Environment, now: float) -> None:
        """Note an API request's arrival for the per-second peak."""
        key = (tenant_id, environment)
        window = self._arrivals.get(key)
        if window is None:
            window = self._arrivals[key] = deque()
        while window and window[0] <= now - 1.0:
            window.popleft()
        window.append(now)
        if len(window) > self.peaks.get(key, 0):
            self.peaks[key] = len(window)

    def count(
        self, tenant_id: int, environment: Environment, kind: EndpointKind, status: int
    ) -> None:
        """Count one answered request."""
        self.requests[(tenant_id, environment, kind, status)] += 1

    def fault(self, tenant_id: int, environment: Environment, kind: FaultKind) -> None:
        """Count one injected fault."""
        self.faults[(tenant_id, environment, kind)] += 1

    def snapshot(
        self, tenant_id: int | None = None, environment: Environment | None = None
    ) -> Counters:
        """A frozen copy, optionally for one tenant and/or environment."""

        def keep(t: int, e: Environment) -> bool:
            return (tenant_id is None or t == tenant_id) and (
                environment is None or e == environment
            )

        return Counters(
            requests={k: n for k, n in self.requests.items() if keep(k[0], k[1])},
            max_requests_per_second={k: n for k, n in self.peaks.items() if keep(k[0], k[1])},
            faults={k: n for k, n in self.faults.items() if keep(k[0], k[1])},
        )

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.requests.clear()
        self.faults.clear()
        self.peaks.clear()
        self._arrivals.clear()
