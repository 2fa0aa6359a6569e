"""What the daemon knows of its own health, and the supervision of its background loops.

One place answers "can this daemon do its work now?" for `/v1/health`, `/healthz` and the systemd
watchdog, so that the three never disagree. `ok`: everything works. `degraded`: the daemon runs but
cannot do all of its work (PostgreSQL unreachable, a configuration problem every sync would hit); it
recovers by itself once the cause is gone. `unhealthy`: a background loop keeps crashing and will
not recover without a restart, so the watchdog stops being fed and systemd restarts the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..logs import log_event

logger = logging.getLogger(__name__)

OK = "ok"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"

# A loop that crashes this many times in a row, with no successful round in between, is failed.
FAILED_AFTER_CRASHES = 5
# Waits before restarting a crashed loop: 1, 2, 4 … 30 s.
_RESTART_SECONDS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


@dataclass
class LoopState:
    """One supervised loop: how often it crashed since its last good round, and why."""

    crashes: int = 0
    restarts: int = 0
    last_error: str | None = None
    last_beat: float | None = None

    @property
    def state(self) -> str:
        if self.crashes >= FAILED_AFTER_CRASHES:
            return "failed"
        return "restarting" if self.crashes else "ok"


class Health:
    """The daemon's health board: problems by subject, the database, and every supervised loop."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        restart_seconds: tuple[float, ...] = _RESTART_SECONDS,
    ) -> None:
        self._clock = clock
        self._restart_seconds = restart_seconds
        self._problems: dict[str, str] = {}
        self.loops: dict[str, LoopState] = {}
        self._database_ok = True
        self._database_observers: list[Callable[[bool], None]] = []

    @property
    def database_ok(self) -> bool:
        """Whether PostgreSQL answered the last time anyone asked."""
        return self._database_ok

    def observe_database(self, observer: Callable[[bool], None]) -> None:
        """Call `observer` with every answer about the database (the stsync_database_up gauge)."""
        self._database_observers.append(observer)

    def database(self, ok: bool, error: str | None = None) -> None:
        """What the last query said; a change is logged once, whoever noticed it."""
        if ok != self._database_ok:
            if ok:
                log_event(logger, logging.INFO, "database.available")
            else:
                log_event(logger, logging.WARNING, "database.unavailable", error=error)
        self._database_ok = ok
        for observer in self._database_observers:
            observer(ok)

    # -- problems of the daemon's own configuration (a ProblemReporter for the sync engine) --------

    def report(self, subject: str, message: str | None) -> None:
        """A problem found (`message`) or proven gone (None) by a sync."""
        if message is None:
            if self._problems.pop(subject, None) is not None:
                log_event(logger, logging.INFO, "health.recovered", subject=subject)
            return
        if subject not in self._problems:
            log_event(logger, logging.ERROR, "health.degraded", subject=subject, reason=message)
        self._problems[subject] = message

    # -- the verdict --------------------------------------------------------------------------

    @property
    def failed_loops(self) -> list[str]:
        return sorted(name for name, loop in self.loops.items() if loop.state == "failed")

    def verdict(self, *, database_ok: bool | None = None) -> tuple[str, list[str]]:
        """`ok`, `degraded` or `unhealthy`, and one line per reason."""
        database = self.database_ok if database_ok is None else database_ok
        reasons = [
            f"background loop {name} keeps failing ({self.loops[name].last_error}); "
            "the daemon needs a restart"
            for name in self.failed_loops
        ]
        if reasons:
            status = UNHEALTHY
        elif not database or self._problems:
            status = DEGRADED
        else:
            status = OK
        if not database:
            reasons.append("PostgreSQL is unreachable; syncs wait until it is back")
        reasons += [self._problems[s] for s in sorted(self._problems)]
        return status, reasons

    @property
    def alive(self) -> bool:
        """Whether the watchdog should be fed: no loop has failed for good."""
        return not self.failed_loops

    # -- supervising loops --------------------------------------------------------------------

    def beat(self, name: str) -> None:
        """A loop finished a round: whatever crashed before, it works now."""
        loop = self.loops.setdefault(name, LoopState())
        if loop.crashes:
            log_event(logger, logging.INFO, "loop.recovered", loop=name, after=loop.crashes)
        loop.crashes = 0
        loop.last_beat = self._clock()

    async def supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body` for as long as the daemon lives, restarting it with backoff when it raises.

        `body` loops forever and calls `beat(name)` after each good round; returning counts as a
        crash too (a loop that ends silently would stop the daemon's work just the same).
        """
        loop = self.loops.setdefault(name, LoopState())
        while True:
            try:
                await body()
                raise RuntimeError(f"loop {name} returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                loop.crashes += 1
                loop.last_error = f"{type(exc).__name__}: {exc}"[:300]
                waits = self._restart_seconds
                delay = waits[min(loop.crashes, len(waits)) - 1]
                log_event(
                    logger,
                    logging.CRITICAL,
                    "loop.crashed",
                    exc_info=exc,
                    loop=name,
                    crashes=loop.crashes,
                    restart_seconds=delay,
                )
                if loop.crashes == FAILED_AFTER_CRASHES:
                    log_event(
                        logger,
                        logging.CRITICAL,
                        "loop.failed",
                        loop=name,
                        crashes=loop.crashes,
                        error=loop.last_error,
                    )
            await asyncio.sleep(delay)
            loop.restarts += 1
