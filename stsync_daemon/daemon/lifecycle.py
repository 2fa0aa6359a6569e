"""The process life cycle under aiorun: uvloop, SIGTERM/SIGINT, the two-phase drain, the loop's end.

aiorun owns the loop and the signals. The first SIGTERM or SIGINT starts the drain (stop taking
work, let running syncs finish within `[sync] shutdown_grace_seconds`, interrupt the rest, close
everything) as a task under `aiorun.shutdown_waits_for`, and the drain stops the loop when it is
done; a second signal skips what is left of the grace period. aiorun's own shutdown phase, which
cancels every task it finds, therefore never cuts a drain short: it waits for it (if the loop
stops some other way, the shutdown callback runs the drain first). Unhandled errors in callbacks
are logged, not fatal (`stop_on_unhandled_errors` stays off): the daemon's loops are supervised,
and one stray library error must not stop every tenant's syncs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import aiorun

from ..config import Settings
from ..errors import StsyncError
from ..logs import log_event
from .app import Daemon

logger = logging.getLogger(__name__)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What aiorun's shutdown phase waits for tasks that are already cancelled and nearly done.
_LEFTOVER_SECONDS = 10.0


class Lifecycle:
    """Starts the daemon once, drains it once, and remembers why start-up failed."""

    def __init__(self, settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
        self.daemon = Daemon(settings)
        self._reload = reload
        self._reloading: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        self._started: asyncio.Future[bool] | None = None
        self._drain: asyncio.Future[None] | None = None

    async def main(self) -> None:
        """Start the daemon; on failure close what started and stop the loop (aiorun would not)."""
        loop = asyncio.get_running_loop()
        started = self._started = loop.create_future()
        ok = False
        if self._reload is not None:
            # From the first instant: SIGHUP's default action would end the process.
            loop.add_signal_handler(signal.SIGHUP, self.on_reload)
        try:
            await self.daemon.start()
            ok = True
        except Exception as exc:
            self.failure = exc
            try:
                await self.daemon.stop(grace_seconds=0)
            except Exception as cleanup:  # the start-up failure is the one to report
                log_event(logger, logging.ERROR, "daemon.stop_failed", error=repr(cleanup))
            finally:
                loop.stop()
        finally:
            started.set_result(ok)

    def on_reload(self) -> None:
        """SIGHUP (`systemctl reload stsync`): read the configuration again, one reload at a time."""
        started = self._started
        if started is None or not started.done() or not started.result() or self._drain:
            log_event(logger, logging.WARNING, "daemon.reload_ignored", reason="not running")
            return
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.ensure_future(self._reload_now())

    async def _reload_now(self) -> None:
        assert self._reload is not None
        notifier = self.daemon.notifier
        notifier.reloading()
        try:
            settings = self._reload()
            await self.daemon.reload(settings)
        except StsyncError as exc:  # a bad file: keep running on the configuration we have
            log_event(logger, logging.ERROR, "daemon.reload_failed", error=str(exc))
        except Exception as exc:
            log_event(logger, logging.ERROR, "daemon.reload_failed", error=repr(exc))
        finally:
            notifier.ready()

    def on_signal(self, loop: asyncio.AbstractEventLoop) -> None:
        """aiorun's shutdown handler (it has ignored both signals from now on): begin the drain."""
        log_event(logger, logging.INFO, "daemon.signal")
        for signum in _SIGNALS:
            loop.add_signal_handler(signum, self._second_signal, signum)
        self._begin_drain(loop)

    def _second_signal(self, signum: int) -> None:
        log_event(logger, logging.INFO, "daemon.signal", signal=signal.Signals(signum).name)
        if hasattr(self.daemon, "runner"):
            self.daemon.runner.interrupt_all()

    def _begin_drain(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        if self._drain is None:
            protected = aiorun.shutdown_waits_for(  # type: ignore[no-untyped-call]  # untyped upstream
                self._drained(loop), loop=loop
            )
            self._drain = asyncio.ensure_future(protected, loop=loop)
        return self._drain

    async def _drained(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            # A signal during start-up waits for it: stopping half-started parts races them.
            if self._started is None or await self._started:
                await self.daemon.stop()
        finally:
            loop.stop()  # aiorun's shutdown phase follows; closing the loop drops our handlers

    async def on_loop_stopped(self, loop: asyncio.AbstractEventLoop) -> None:
        """aiorun's shutdown callback: make sure the drain ran (the loop may stop without a signal)."""
        if self.failure is None:
            await self._begin_drain(loop)


def run(settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT and its drain; raises what made start-up fail.
    `reload` reads the configuration again on SIGHUP."""
    life = Lifecycle(settings, reload)
    # aiorun logs each step of its shutdown at INFO: keep its warnings (tasks refusing to exit) only.
    logging.getLogger("aiorun").setLevel(logging.WARNING)
    options: dict[str, Any] = {
        "shutdown_handler": life.on_signal,
        "shutdown_callback": life.on_loop_stopped,
        "stop_on_unhandled_errors": False,
        "timeout_task_shutdown": _LEFTOVER_SECONDS,
    }
    main: Coroutine[Any, Any, None] = life.main()
    if sys.version_info >= (3, 14):  # pragma: no cover - set_event_loop_policy is deprecated there
        import uvloop

        loop = uvloop.new_event_loop()
        try:
            aiorun.run(main, loop=loop, **options)
        finally:
            loop.close()
    else:
        aiorun.run(main, use_uvloop=True, **options)
    if life.failure is not None:
        raise life.failure
