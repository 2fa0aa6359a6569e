"""The control-socket client of stsyncctl: HTTP/1.1 over a Unix socket, JSON and NDJSON.

Every way of failing to talk to the daemon becomes `DaemonUnreachable` (exit 3) with one line saying
which socket and what to check; every error answer of the daemon becomes `DaemonError`.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from ..control.protocol import API_PREFIX, NDJSON

SERVICE_HINT = "is stsync.service running? (systemctl status stsync.service)"
GROUP_HINT = (
    "is your user in the stsync group? (id -nG; sudo usermod -aG stsync $USER, then log in again)"
)
SOCKET_HINT = "or pass --socket PATH / set STSYNC_SOCKET if the daemon listens elsewhere"

# Codes of the daemon's error bodies that mean "the daemon will not serve us now" rather than "your
# request failed": they share exit 3 with an unreachable daemon.
REFUSING_CODES = frozenset({"forbidden", "unavailable"})


class DaemonUnreachable(Exception):
    """The daemon cannot be reached or refuses this client; the message is one actionable line."""


class DaemonError(Exception):
    """The daemon answered a request with an error body `{"message", "code"}`."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def describe_connect_error(socket_path: Path, error: OSError) -> str:
    """One line telling an operator why the socket cannot be used and what to check."""
    number = error.errno
    if number == errno.ENOENT:
        return f"cannot reach the daemon: no socket at {socket_path}; {SERVICE_HINT} {SOCKET_HINT}"
    if number in (errno.EACCES, errno.EPERM):
        return f"permission denied on the daemon's socket {socket_path}; {GROUP_HINT}"
    if number == errno.ECONNREFUSED:
        return (
            f"connection refused on {socket_path}: nothing is listening there (the daemon is stopped "
            f"or crashed and left its socket behind); {SERVICE_HINT}"
        )
    if number == errno.ENOTDIR:
        return f"cannot reach the daemon: {socket_path} is not a valid socket path; {SOCKET_HINT}"
    if number == errno.ENOTSOCK:
        return f"cannot reach the daemon: {socket_path} is not a socket; {SOCKET_HINT}"
    reason = error.strerror or str(error) or type(error).__name__
    return f"cannot reach the daemon at {socket_path}: {reason}; {SERVICE_HINT}"


def _error_from_answer(socket_path: Path, status: int, body: bytes) -> Exception:
    """Map a non-2xx answer to `DaemonUnreachable` (we are refused) or `DaemonError`."""
    message: str | None = None
    code: str | None = None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        message = data["message"]
        code = data["code"] if isinstance(data.get("code"), str) else None
    if status == 403 or code == "forbidden":
        # The daemon's message says what this user lacks (the group, or the right to change
        # credentials) and what to do about it; a bare refusal gets the group hint.
        refused = f"the daemon on {socket_path} refused this user (uid {os.getuid()})"
        return DaemonUnreachable(f"{refused}: {message}" if message else f"{refused}; {GROUP_HINT}")
    if code == "unavailable" or (message is None and status == 503):
        detail = message or "service unavailable"
        return DaemonUnreachable(f"the daemon on {socket_path} cannot serve now: {detail}")
    if message is None:
        if status in (404, 405):
            return DaemonUnreachable(
                f"the daemon on {socket_path} does not know this command (HTTP {status}); is it "
                "stsyncd, and is it as recent as stsyncctl?"
            )
        return DaemonError(f"the daemon answered HTTP {status}", code="internal", status=status)
    return DaemonError(message, code=code or "bad_request", status=status)


class ControlClient:
    """An open connection pool to the daemon's control socket; use as `async with`."""

    def __init__(self, socket_path: Path, *, connect_timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControlClient:
        connector = aiohttp.UnixConnector(path=str(self.socket_path))
        self._session = aiohttp.ClientSession(
            base_url="http://localhost", connector=connector, timeout=self._timeout
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session, once entered."""
        if self._session is None:
            raise RuntimeError("ControlClient used outside `async with`")
        return self._session

    def _unreachable(self, error: Exception) -> DaemonUnreachable:
        if isinstance(error, aiohttp.ClientConnectorError):
            return DaemonUnreachable(describe_connect_error(self.socket_path, error.os_error))
        if isinstance(error, TimeoutError | aiohttp.ServerTimeoutError):
            return DaemonUnreachable(
                f"the daemon on {self.socket_path} did not answer in time; {SERVICE_HINT}"
            )
        if isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
            return DaemonUnreachable(
                f"the connection to the daemon on {self.socket_path} was lost "
                f"({type(error).__name__}); {SERVICE_HINT}"
            )
        if isinstance(error, OSError):
            return DaemonUnreachable(describe_connect_error(self.socket_path, error))
        return DaemonUnreachable(
            f"cannot talk to the daemon on {self.socket_path}: {error or type(error).__name__}"
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object | None = None,
    ) -> Any:
        """One request with a JSON (or empty) answer."""
        try:
            async with self.session.request(
                method, API_PREFIX + path, params=params, json=body
            ) as response:
                payload = await response.read()
                if response.status >= 400:
                    raise _error_from_answer(self.socket_path, response.status, payload)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise self._unreachable(error) from None
        if not payload.strip():
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise DaemonUnreachable(
                f"the daemon on {self.socket_path} answered something that is not JSON; is it stsyncd?"
            ) from None

    async def stream(self, path: str, body: object) -> AsyncIterator[dict[str, Any]]:
        """POST and yield the answer: NDJSON events one by one, or a single JSON document.

        Lines are split here rather than with `readline()`, whose size limit a long run summary
        could exceed.
        """
        try:
            async with self.session.post(API_PREFIX + path, json=body) as response:
                if response.status >= 400:
                    raise _error_from_answer(
                        self.socket_path, response.status, await response.read()
                    )
                if response.content_type != NDJSON:
                    document = json.loads(await response.read())
                    if not isinstance(document, dict):
                        raise ValueError("not an object")
                    yield document
                    return
                buffer = b""
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield _event(line)
                if buffer.strip():
                    yield _event(buffer)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise self._unreachable(error) from None
        except ValueError:
            raise DaemonUnreachable(
                f"the daemon on {self.socket_path} sent a malformed answer; is it stsyncd, and is it "
                "as recent as stsyncctl?"
            ) from None


def _event(line: bytes) -> dict[str, Any]:
    event = json.loads(line)
    if not isinstance(event, dict):
        raise ValueError("an NDJSON event is not an object")
    return event
