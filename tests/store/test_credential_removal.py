"""`credentials remove` keeps the history (the credential marked removed, its secrets erased) unless
`--purge`; a removed credential never runs again and does not hold its tenant. Real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pydantic import SecretStr

from stsync_daemon.enums import CredentialStatus, Environment
from stsync_daemon.errors import ConflictError, NotFoundError
from stsync_daemon.store.credentials import Credential, CredentialStore, NewCredential
from stsync_daemon.store.crypto import SecretCipher, generate_key
from stsync_daemon.store.db import create_pool


@pytest.fixture
async def store(database_dsn: str) -> AsyncIterator[CredentialStore]:
    pool = await create_pool(database_dsn, min_size=1, max_size=2)
    try:
        yield CredentialStore(pool, SecretCipher([generate_key().encode()]))
    finally:
        await pool.close()


def pool_of(store: CredentialStore) -> asyncpg.Pool:
    return store._pool  # the store's own pool, to look at what it left behind


async def with_history(store: CredentialStore, tenant_id: int = 7) -> Credential:
    credential = await store.add(
        NewCredential(
            "acme", "Acme", Environment.PRODUCTION, tenant_id, "cid", SecretStr("secret.x")
        )
    )
    pool = pool_of(store)
    await pool.execute(
        "INSERT INTO stsync.sync_log (id, credential_id, data_type, trigger, mode, started_from, "
        "status, completed_at) VALUES ($1, $2, 'customers', 'manual', 'full', 'beginning', "
        "'completed', now())",
        uuid.uuid4(),
        credential.id,
    )
    await pool.execute(
        "INSERT INTO stsync.cursors (credential_id, data_type, continue_from) "
        "VALUES ($1, 'customers', 'token')",
        credential.id,
    )
    await pool.execute(
        "INSERT INTO stsync.dead_letters (credential_id, environment, tenant_id, data_type, "
        "record_id, reason, raw) VALUES ($1, 'production', $2, 'customers', '1', 'r', 'x')",
        credential.id,
        tenant_id,
    )
    return credential


async def history(store: CredentialStore, credential_id: uuid.UUID) -> tuple[int, int, int, int]:
    pool = pool_of(store)
    return tuple(  # type: ignore[return-value]
        [
            await pool.fetchval(
                f"SELECT count(*) FROM stsync.{table} WHERE credential_id = $1", credential_id
            )
            for table in ("sync_log", "cursors", "dead_letters", "sync_totals")
        ]
    )


async def test_remove_keeps_the_history_and_frees_the_tenant(store: CredentialStore) -> None:
    credential = await with_history(store)
    await store.remove(credential.id)
    removed = await store.get(credential.id)
    assert removed.status is CredentialStatus.REMOVED and not removed.schedule_enabled
    secrets = await pool_of(store).fetchrow(
        "SELECT client_secret_encrypted, app_key_encrypted FROM stsync.credentials WHERE id = $1",
        credential.id,
    )
    assert tuple(secrets) == (None, None)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):  # a removed credential has no secret to sync with
        await store.access(removed, SecretStr("ak"))
    assert await history(store, credential.id) == (1, 1, 1, 1)
    # Gone from lists and schedules; listed when asked for.
    assert [c.id for c in await store.list()] == []
    assert [c.id for c in await store.list(status=CredentialStatus.REMOVED)] == [credential.id]
    # Nothing more can be done to it but a purge.
    for change in (
        store.update(credential.id, client_id="other"),
        store.set_status(credential.id, CredentialStatus.ACTIVE),
        store.remove(credential.id),
    ):
        with pytest.raises(ConflictError, match="was removed"):
            await change
    # Its tenant can be added again.
    again = await with_history(store)
    assert again.id != credential.id and [c.id for c in await store.list()] == [again.id]


async def test_purge_deletes_the_history_too(store: CredentialStore) -> None:
    credential = await with_history(store)
    await store.remove(credential.id, purge=True)
    with pytest.raises(NotFoundError):
        await store.get(credential.id)
    assert await history(store, credential.id) == (0, 0, 0, 0)
    # A credential removed earlier can still be purged.
    kept = await with_history(store, tenant_id=8)
    await store.remove(kept.id)
    await store.remove(kept.id, purge=True)
    assert await history(store, kept.id) == (0, 0, 0, 0)
    with pytest.raises(NotFoundError):
        await store.remove(uuid.uuid4())
