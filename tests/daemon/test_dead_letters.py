"""Dead letters as the control channel shows them: filters, paging, raw bytes, status counts.

Rows are inserted with SQL, as the sync engine would leave them (migration 0005: `raw` bytes as
received, `payload` only when jsonb took it, `resolved_at` once a later sync stored the record).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from stsync_daemon.control.protocol import DeadLettersQuery, StatusQuery
from stsync_daemon.control.server import dead_letters_document, status_document
from stsync_daemon.enums import DataType, Environment
from stsync_daemon.store.db import create_pool
from stsync_daemon.store.syncs import SyncStore

ACME, BOLT, GONE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await seed(conn)
        yield pool
    finally:
        await pool.close()


async def seed(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO stsync.companies (id, name) VALUES ('1042', 'Acme HVAC'), "
        "('2077', 'Bolt Plumbing')"
    )
    await conn.executemany(
        "INSERT INTO stsync.credentials (id, company_id, environment, tenant_id, client_id, "
        "client_secret_encrypted) VALUES ($1, $2, $3, $4, 'cid', 'x')",
        [(ACME, "1042", "production", 1), (BOLT, "2077", "integration", 2)],
    )
    # (id, credential, environment, data type, record id, raw, payload, created, resolved)
    rows = [
        (1, ACME, "production", "customers", "1", b'{"id": 1, "name": "A\\u0000B"}', None, 4, None),
        (2, ACME, "production", "invoices", "2", b'{"id": 2, "memo": "caf\xe9"}', None, 3, None),
        (3, BOLT, "integration", "customers", "3", b'{"id": 3, "x": "\\ud800"}', None, 2, None),
        (4, ACME, "production", "customers", "4", None, b'{"id":4}', 1, 10),  # before 0005
        (5, GONE, "production", "invoices", None, b"\xff\xfe", None, 0, None),  # credential gone
    ]
    for key, credential, env, data_type, record, raw, payload, created, resolved in rows:
        await conn.execute(
            "INSERT INTO stsync.dead_letters (id, credential_id, environment, tenant_id, "
            "data_type, record_id, reason, raw, payload, created_at, resolved_at) "
            "VALUES ($1, $2, $3, 7, $4, $5, $6, $7, $8, $9, $10)",
            key,
            credential,
            env,
            data_type,
            record,
            f"reason {key}",
            raw,
            payload,
            T0 + timedelta(seconds=created),
            T0 + timedelta(seconds=resolved) if resolved is not None else None,
        )


async def ids(pool: asyncpg.Pool, **filters: object) -> tuple[list[int], int]:
    document = await dead_letters_document(
        SyncStore(pool), DeadLettersQuery.model_validate(filters)
    )
    return [item["id"] for item in document["dead_letters"]], document["total"]


async def test_open_ones_newest_first_and_resolved_ones_on_request(pool: asyncpg.Pool) -> None:
    assert await ids(pool) == ([1, 2, 3, 5], 4)
    assert await ids(pool, include_resolved=True) == ([1, 2, 3, 4, 5], 5)
    assert await ids(pool, include_resolved="true", limit="2") == ([1, 2], 5)
    assert await ids(pool, limit=1) == ([1], 4)  # the total counts every match, not the page


async def test_filters(pool: asyncpg.Pool) -> None:
    assert await ids(pool, company_id="1042") == ([1, 2], 2)
    assert await ids(pool, company_id="1042", include_resolved=True) == ([1, 2, 4], 3)
    assert await ids(pool, credential_id=str(BOLT)) == ([3], 1)
    assert await ids(pool, credential_id=GONE) == ([5], 1)
    assert await ids(pool, environment=Environment.INTEGRATION) == ([3], 1)
    assert await ids(pool, data_type=DataType.INVOICES) == ([2, 5], 2)
    assert await ids(pool, company_id="1042", data_type="customers", environment="production") == (
        [1],
        1,
    )
    assert await ids(pool, company_id="nobody") == ([], 0)


async def test_raw_is_the_record_as_received_with_bad_bytes_escaped(pool: asyncpg.Pool) -> None:
    document = await dead_letters_document(SyncStore(pool), DeadLettersQuery(include_resolved=True))
    raw = {item["id"]: item["raw"] for item in document["dead_letters"]}
    assert raw == {
        1: '{"id": 1, "name": "A\\u0000B"}',  # the escape as it came, not a NUL
        2: '{"id": 2, "memo": "caf\\xe9"}',  # invalid UTF-8, backslash-escaped
        3: '{"id": 3, "x": "\\ud800"}',
        4: '{"id": 4}',  # an old row: its payload's JSON text
        5: "\\xff\\xfe",
    }


async def test_each_item_says_whose_and_when(pool: asyncpg.Pool) -> None:
    document = await dead_letters_document(SyncStore(pool), DeadLettersQuery(include_resolved=True))
    items = {item["id"]: item for item in document["dead_letters"]}
    assert items[1] == {
        "id": 1,
        "sync_id": None,
        "credential_id": str(ACME),
        "company_id": "1042",
        "company": "Acme HVAC",
        "environment": "production",
        "tenant_id": 7,
        "data_type": "customers",
        "record_id": "1",
        "reason": "reason 1",
        "raw": '{"id": 1, "name": "A\\u0000B"}',
        "created_at": "2026-11-30T12:00:04Z",
        "resolved_at": None,
    }
    assert items[4]["resolved_at"] == "2026-11-30T12:00:10Z"
    gone = items[5]
    assert (gone["credential_id"], gone["company_id"], gone["company"]) == (str(GONE), None, None)
    assert gone["record_id"] is None


async def test_status_and_report_count_open_dead_letters(pool: asyncpg.Pool) -> None:
    async def counted(company_id: str | None) -> int:
        document = await status_document(SyncStore(pool), StatusQuery(company_id=company_id))
        return int(document["summary"]["dead_letters"])

    assert await counted(None) == 4
    assert await counted("1042") == 2
    assert await counted("2077") == 1
    assert await counted("nobody") == 0
    # Filters on syncs do not narrow it: it counts what waits for the operator.
    document = await status_document(SyncStore(pool), StatusQuery(running_only=True, last_24h=True))
    assert document["summary"]["dead_letters"] == 4
    assert (await SyncStore(pool).report(24))["summary"]["dead_letters"] == 4
