"""Connection pool with the codecs every stsync connection needs."""

from __future__ import annotations

import socket
from typing import Any

import asyncpg
import orjson

from ..errors import DatabaseError


def _encode_jsonb(value: Any) -> bytes:
    # Binary jsonb format: a version byte, then the JSON text. Bytes that start with the version
    # byte are already in that format (JSON text never starts with \x01); other bytes are JSON.
    if isinstance(value, bytes):
        return value if value[:1] == b"\x01" else b"\x01" + value
    if isinstance(value, bytearray | memoryview):
        return b"\x01" + bytes(value)
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


# What a connection over a Unix socket asks the kernel to queue towards the backend. A Unix socket's
# buffer never grows by itself as TCP's does, and its default (208 KiB, about 1.5 ms of a COPY's
# work for the backend) ran dry each time the event loop decoded a page: the backend then waited
# for the loop. The kernel caps the request at net.core.wmem_max (README: "Tuning").
UNIX_SEND_BUFFER_BYTES = 4 * 1024 * 1024


def _widen_send_buffer(conn: asyncpg.Connection) -> None:
    transport = getattr(conn, "_transport", None)  # asyncpg has no public accessor
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER_BYTES)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Binary jsonb through orjson (cheaper for the backend than text and for us than json), and
    a send buffer that lets COPY data flow while the event loop is busy."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )
    _widen_send_buffer(conn)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query: one round trip saved per use of the pool.

    asyncpg still rolls back an open transaction. stsync sets no session state on pooled
    connections (LISTEN has its own connection); the one thing a session keeps, an advisory lock,
    is released by its holder, which terminates the connection when it cannot.
    """


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    """A pool whose connections speak UTC and plan each statement for its values; failure becomes
    a one-line `DatabaseError`."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            reset=_keep_session,
            # Custom plans always: the readers' optional filters (`$1 IS NULL OR ...`) fold away
            # only when the values are known; a cached generic plan scans every sync instead.
            server_settings={
                "application_name": "stsync",
                "timezone": "UTC",
                "plan_cache_mode": "force_custom_plan",
            },
            command_timeout=None,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {describe_db_error(exc)}") from None
    assert pool is not None
    return pool


def describe_db_error(exc: BaseException) -> str:
    """A short, secret-free description of a database failure."""
    if isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__}: {exc.args[0] if exc.args else exc}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__} (is PostgreSQL running and the DSN right?)"
    return f"{type(exc).__name__}: {exc}"


def is_bad_value(exc: BaseException) -> bool:
    """Whether a database error was caused by a value passed in (out of range, a NUL in text)
    rather than by the database: asyncpg refusing to encode it, or PostgreSQL's data exceptions."""
    if isinstance(exc, asyncpg.DataError):  # SQLSTATE class 22
        return True
    return isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)


DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
)


async def ping(pool: asyncpg.Pool) -> None:
    """One round trip: raises when PostgreSQL cannot answer."""
    await pool.fetchval("SELECT 1")


async def ensure_database(conn: asyncpg.Connection) -> None:
    """Create the `stsync` database on a private cluster (the demo's) unless it exists."""
    if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'stsync'"):
        await conn.execute("CREATE DATABASE stsync")
