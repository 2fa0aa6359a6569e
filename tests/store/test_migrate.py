import asyncio

import asyncpg

from stsync_daemon.store.migrate import available, current_version, migrate


async def test_migrations_apply_once_and_concurrently(empty_database_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_database_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [m.version for r in results for m in r]
        assert sorted(applied) == [m.version for m in available()]
        assert await migrate(conns[0]) == []
        assert await current_version(conns[0]) == available()[-1].version
        tables = await conns[0].fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'servicetitan'"
        )
        assert tables == 2
    finally:
        for c in conns:
            await c.close()


async def test_empty_database_has_version_zero(empty_database_dsn: str) -> None:
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        assert await current_version(conn) == 0
    finally:
        await conn.close()


async def test_payloads_are_compressed_with_lz4(database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        methods = await conn.fetch(
            "SELECT attrelid::regclass::text AS t, attcompression::text FROM pg_attribute "
            "WHERE attname = 'payload' AND attrelid IN "
            "('servicetitan.customers'::regclass, 'servicetitan.invoices'::regclass)"
        )
    finally:
        await conn.close()
    assert {r["attcompression"] for r in methods} == {"l"}, methods
