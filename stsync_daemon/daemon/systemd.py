"""The sd_notify protocol without a library: one datagram of `KEY=VALUE` lines to `$NOTIFY_SOCKET`.

Outside systemd (no `$NOTIFY_SOCKET`) every method is a no-op, so the daemon calls them
unconditionally. A failed send is logged, never raised: systemd trouble must not stop syncs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from ..logs import log_event

logger = logging.getLogger(__name__)


def _address(value: str | None) -> str | None:
    """A socket address from `$NOTIFY_SOCKET`: a path, or `@name` in the abstract namespace."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log_event(logger, logging.WARNING, "systemd.notify_socket_unsupported", address=value)
    return None


class SystemdNotifier:
    """Sends readiness, status, stopping and watchdog notifications to the service manager."""

    def __init__(self, notify_socket: str | None) -> None:
        self._address = _address(notify_socket)
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """A notifier for `$NOTIFY_SOCKET` (a no-op one when it is unset)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether we run under a service manager that listens."""
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send `KEY=VALUE` lines in one datagram; True if sent (False when disabled or failed)."""
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a stalled manager; a lost ping is better.
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(message, self._address)
        except OSError as exc:
            log_event(
                logger,
                logging.WARNING,
                "systemd.notify_failed",
                keys=sorted(fields),
                error=exc.strerror or str(exc),
            )
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up finished: systemd reports the unit started (Type=notify)."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=_one_line(status))

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status stsync`."""
        return self.notify(STATUS=_one_line(text))

    def stopping(self) -> bool:
        """A graceful stop began."""
        return self.notify(STOPPING=1)

    def watchdog(self) -> bool:
        """Still alive; must come more often than `WatchdogSec=`."""
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        """Tell systemd a reload began (`systemctl reload` waits for the next READY=1)."""
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start or stop timeout kills us (long drains)."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(int(seconds * 1_000_000), 0))

    def close(self) -> None:
        """Release the socket; later notifications open a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of `WatchdogSec=`), or None when the watchdog is off for us."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the variables were meant for another process (e.g. our parent)
    return usec / 2 / 1_000_000


async def watchdog_loop(
    notifier: SystemdNotifier, interval: float, *, alive: Callable[[], bool] | None = None
) -> None:
    """Ping from the event loop until cancelled: if the loop blocks, pings stop and systemd restarts us.

    `alive` False (a background loop failed for good) stops the pings too: the restart it brings
    is the way back to full work.
    """
    warned = False
    while True:
        if alive is None or alive():
            notifier.watchdog()
            warned = False
        elif not warned:
            log_event(logger, logging.CRITICAL, "systemd.watchdog_starved")
            warned = True
        await asyncio.sleep(interval)
