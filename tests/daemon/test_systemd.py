"""sd_notify against a real datagram socket, as systemd listens for it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stsync_daemon.daemon.systemd import SystemdNotifier, watchdog_interval, watchdog_loop


class Listener:
    """A bound AF_UNIX SOCK_DGRAM socket standing in for systemd."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self, timeout: float = 2.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def pending(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except TimeoutError:
            return False
        return True


@pytest.fixture
def path_listener() -> Iterator[Listener]:
    # A short directory: socket paths are limited to 107 bytes, pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="stsync-sd-"))
    path = directory / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield Listener(sock, str(path))
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"stsync-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Listener(sock, "@" + name)
    finally:
        sock.close()


def test_messages_arrive_on_a_path_socket(path_listener: Listener) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path_listener.env_value})
    assert notifier.enabled
    assert notifier.ready()
    assert path_listener.receive() == {"READY": "1"}
    assert notifier.status("2 syncs running:\nacme customers")
    assert path_listener.receive() == {"STATUS": "2 syncs running: acme customers"}
    assert notifier.ready(status="idle")
    assert path_listener.receive() == {"READY": "1", "STATUS": "idle"}
    assert notifier.watchdog()
    assert path_listener.receive() == {"WATCHDOG": "1"}
    assert notifier.extend_timeout(2.5)
    assert path_listener.receive() == {"EXTEND_TIMEOUT_USEC": "2500000"}
    assert notifier.stopping()
    assert path_listener.receive() == {"STOPPING": "1"}
    notifier.close()
    notifier.close()


def test_messages_arrive_on_an_abstract_socket(abstract_listener: Listener) -> None:
    notifier = SystemdNotifier(abstract_listener.env_value)
    assert notifier.ready()
    assert abstract_listener.receive() == {"READY": "1"}
    notifier.close()


def test_no_op_outside_systemd() -> None:
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not SystemdNotifier("vsock:2:1234").enabled  # unsupported transport: disabled, not fatal


def test_a_vanished_socket_is_logged_not_raised(path_listener: Listener) -> None:
    notifier = SystemdNotifier(path_listener.env_value)
    os.unlink(path_listener.env_value)
    assert notifier.status("still alive") is False
    notifier.close()


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": pid}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


async def test_watchdog_loop_pings_until_cancelled(path_listener: Listener) -> None:
    notifier = SystemdNotifier(path_listener.env_value)
    task = asyncio.create_task(watchdog_loop(notifier, 0.01))
    try:
        for _ in range(3):
            received = await asyncio.to_thread(path_listener.receive)
            assert received == {"WATCHDOG": "1"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    while path_listener.pending():
        path_listener.receive()
    await asyncio.sleep(0.05)
    assert not path_listener.pending()
    notifier.close()
