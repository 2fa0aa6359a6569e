"""The pool's connections: what each one is set up with."""

from __future__ import annotations

import socket
from pathlib import Path

from stsync_daemon.store.db import UNIX_SEND_BUFFER_BYTES, create_pool


async def test_a_unix_socket_connection_queues_megabytes_of_copy_data(database_dsn: str) -> None:
    """The backend keeps reading a COPY while the event loop decodes a page (bench_throughput)."""
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    default = int(Path("/proc/sys/net/core/wmem_default").read_text())
    pool = await create_pool(database_dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            sock = conn._transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert sock.family == socket.AF_UNIX  # the tests' cluster listens on a socket only
            size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        await pool.close()
    # Linux caps the request at wmem_max and doubles it (room for its bookkeeping).
    assert size == 2 * min(UNIX_SEND_BUFFER_BYTES, wmem_max)
    assert size >= 2 * default or wmem_max < default
