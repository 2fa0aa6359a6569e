"""Faults on the data path: records PostgreSQL refuses, replays, clocks, locks and outages mid-sync.

Each test injects one fault against the real sandbox and a real PostgreSQL, then checks that the
tenant's other data arrives, that nothing is lost, and that the next sync carries on by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from stsync_daemon.embedded.postgres import PrivateCluster
from stsync_daemon.enums import CredentialStatus, DataType, Environment, ErrorCategory, SyncStatus
from stsync_daemon.sandbox import EndpointKind, FaultRule, PoisonKind, SandboxConfig
from stsync_daemon.sandbox.dataset import Dataset
from stsync_daemon.sync import records
from tests.support import Rig, engine_rig, tenant

PROD = Environment.PRODUCTION
CUSTOMERS = DataType.CUSTOMERS
OPEN_LETTERS = "SELECT count(*) FROM stsync.dead_letters WHERE resolved_at IS NULL"


@pytest.fixture
async def rig(database_dsn: str, tmp_path: Path) -> AsyncIterator[Rig]:
    config = SandboxConfig(
        tenants=(tenant(102, customers=300, invoices=200),), export_page_size=100, seed=5
    )
    async with engine_rig(config, database_dsn, tmp_path) as made:
        yield made


def dataset(rig: Rig, data_type: DataType = CUSTOMERS) -> Dataset:
    return rig.sandbox.state.tenant(102, PROD).datasets[data_type]


def serve_as(data: Dataset, record_id: int, edit: Callable[[str], str]) -> Callable[[], None]:
    """Serve one record's JSON text through `edit` from now on (and change it, so that it is
    exported again); the returned function serves it as generated again, changed once more."""
    original = data.render_json

    def render(rid: int) -> str:
        text = original(rid)
        return edit(text) if rid == record_id else text

    data.render_json = render  # type: ignore[method-assign]
    data.touch(record_id)

    def fix() -> None:
        data.render_json = original  # type: ignore[method-assign]
        data.touch(record_id)

    return fix


def with_name(value_json: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        head, sep, rest = text.partition('"name":"')
        assert sep, text[:80]
        _, _, tail = rest.partition('"')
        return f'{head}{sep}{value_json}"{tail}'

    return edit


async def test_a_record_postgres_cannot_store_is_dead_lettered_and_the_tenant_goes_on(
    rig: Rig,
) -> None:
    cred = await rig.add(102)
    assert (await rig.sync(cred, CUSTOMERS)).status is SyncStatus.COMPLETED
    data = dataset(rig)
    bad = data.id_at(17)
    fix = serve_as(data, bad, with_name("a\\u0000b"))
    await rig.sandbox.mutate(102, PROD, CUSTOMERS, modify=5)

    result = await rig.sync(cred, CUSTOMERS)
    assert result.status is SyncStatus.COMPLETED, result.error_message
    assert (result.records_processed, result.records_failed) == (6, 1)
    letter = await rig.pool.fetchrow("SELECT * FROM stsync.dead_letters")
    assert letter["record_id"] == str(bad) and letter["resolved_at"] is None
    assert "NUL" in letter["reason"]
    assert b'"name":"a\\u0000b"' in letter["raw"] and letter["payload"] is None
    # The cursor moved past it: the next sync has nothing to do, the tenant is not stuck.
    assert (await rig.sync(cred, CUSTOMERS)).records_processed == 0

    fix()  # fixed upstream: the next sync stores it and the dead letter is resolved
    fixed = await rig.sync(cred, CUSTOMERS)
    assert (fixed.status, fixed.records_processed, fixed.records_failed) == (
        SyncStatus.COMPLETED,
        1,
        0,
    )
    assert await rig.pool.fetchval(OPEN_LETTERS) == 0
    await rig.assert_equal_truth(102, CUSTOMERS)


async def test_a_record_refused_by_postgresql_itself_is_isolated_from_its_batch(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever PostgreSQL refuses that no check foresaw: the batch is split until the record is alone."""
    monkeypatch.setattr(records, "_NUL_ESCAPE", b"\x00never in JSON text\x00")
    cred = await rig.add(102)
    data = dataset(rig)
    bad = data.id_at(140)
    serve_as(data, bad, with_name("a\\u0000b"))
    result = await rig.sync(cred, CUSTOMERS)
    assert result.status is SyncStatus.COMPLETED, result.error_message
    assert (result.records_processed, result.records_failed) == (300, 1)
    letter = await rig.pool.fetchrow(
        "SELECT record_id, reason, raw, payload FROM stsync.dead_letters"
    )
    assert letter["record_id"] == str(bad)
    assert letter["reason"].startswith("PostgreSQL cannot store it: CharacterNotInRepertoireError")
    assert b"a\\u0000b" in letter["raw"] and letter["payload"] is None
    stored = await rig.pool.fetchval("SELECT count(*) FROM servicetitan.customers")
    assert stored == 299  # every record but the one PostgreSQL refused


async def test_a_record_refused_by_postgresql_in_a_backfill_page_is_isolated_too(
    database_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """List pages converted apart and refused at the write: the same split, the page committed."""
    monkeypatch.setattr(records, "_NUL_ESCAPE", b"\x00never in JSON text\x00")
    config = SandboxConfig(
        tenants=(tenant(102, customers=3000, invoices=10),), export_page_size=100, seed=5
    )
    backfill = {"backfill_min_records": 1000, "backfill_page_size": 200, "backfill_concurrency": 4}
    async with engine_rig(config, database_dsn, tmp_path, sync=backfill) as rig:
        cred = await rig.add(102)
        data = dataset(rig)
        bad = data.id_at(1234)
        serve_as(data, bad, with_name("a\\u0000b"))
        result = await rig.sync(cred, CUSTOMERS)
        assert result.status is SyncStatus.COMPLETED, result.error_message
        assert result.records_failed >= 1
        lists = rig.sandbox.counters(102, PROD).total(kind=EndpointKind.CUSTOMERS_LIST, status=200)
        assert lists == 1 + 15  # the count, then every page once: none failed for the record
        letters = await rig.pool.fetch("SELECT record_id, reason FROM stsync.dead_letters")
        # Once from its list page; once more from the catch-up export, as it changed just before.
        assert [r["record_id"] for r in letters] in ([str(bad)], [str(bad)] * 2)
        assert letters[0]["reason"].startswith("PostgreSQL cannot store it")
        stored = await rig.pool.fetchval("SELECT count(*) FROM servicetitan.customers")
        assert stored == 2999
        cursor = await rig.pool.fetchrow(
            "SELECT continue_from, backfill_started_at FROM stsync.cursors "
            "WHERE data_type = 'customers'"
        )
        assert cursor["continue_from"] and cursor["backfill_started_at"] is None


async def test_integers_beyond_int64_never_reach_a_bigint_column(rig: Rig) -> None:
    cred = await rig.add(102)
    customers, invoices = dataset(rig), dataset(rig, DataType.INVOICES)
    big = "9223372036854775808"  # 2**63: orjson keeps it an int, bigint cannot hold it
    bad_id = customers.id_at(3)
    serve_as(customers, bad_id, lambda t: t.replace(f'"id":{bad_id}', f'"id":{big}', 1))
    ref = invoices.id_at(4)
    serve_as(
        invoices,
        ref,
        lambda t: t.replace('"customer":{"id":', f'"customer":{{"id":{big},"was":', 1),
    )
    first = await rig.sync(cred, CUSTOMERS)
    assert (first.status, first.records_failed) == (SyncStatus.COMPLETED, 1)
    assert "64-bit" in await rig.pool.fetchval("SELECT reason FROM stsync.dead_letters")
    second = await rig.sync(cred, DataType.INVOICES)
    assert (second.status, second.records_failed) == (SyncStatus.COMPLETED, 0)
    row = await rig.pool.fetchrow(
        "SELECT customer_id, payload FROM servicetitan.invoices WHERE id = $1", ref
    )
    assert row["customer_id"] is None  # the typed column is best effort; the payload keeps it
    assert row["payload"]["customer"]["id"] == 2**63


async def test_an_older_version_never_replaces_a_newer_row(rig: Rig) -> None:
    cred = await rig.add(102)
    await rig.sync(cred, CUSTOMERS)
    data = dataset(rig)
    target = data.id_at(9)
    data.touch(target)
    await rig.sync(cred, CUSTOMERS)
    newer = await rig.pool.fetchrow(
        "SELECT modified_on, payload, synced_at FROM servicetitan.customers WHERE id = $1", target
    )
    # A replay serves an older version of it (and a different name): it must not roll back.
    older = "2019-05-05T05:05:05Z"
    serve_as(data, target, lambda t: with_name("Rolled Back")(_set_modified(t, older)))
    replay = await rig.sync(cred, CUSTOMERS)
    assert replay.records_processed == 1
    kept = await rig.pool.fetchrow(
        "SELECT modified_on, payload FROM servicetitan.customers WHERE id = $1", target
    )
    assert kept["modified_on"] == newer["modified_on"]
    assert kept["payload"]["name"] != "Rolled Back"


async def test_a_tie_on_modified_on_is_decided_by_content(rig: Rig) -> None:
    cred = await rig.add(102)
    await rig.sync(cred, CUSTOMERS)
    data = dataset(rig)
    target = data.id_at(11)
    data.touch(target)
    await rig.sync(cred, CUSTOMERS)
    before = await rig.pool.fetchrow(
        "SELECT modified_on FROM servicetitan.customers WHERE id = $1", target
    )
    # Exported again with the very same modifiedOn as stored but a new name: content decides.
    stamp = await rig.pool.fetchval(
        "SELECT payload->>'modifiedOn' FROM servicetitan.customers WHERE id = $1", target
    )
    serve_as(data, target, lambda t: with_name("Same Time, New Name")(_set_modified(t, stamp)))
    await rig.sync(cred, CUSTOMERS)
    after = await rig.pool.fetchrow(
        "SELECT modified_on, payload FROM servicetitan.customers WHERE id = $1", target
    )
    assert after["modified_on"] == before["modified_on"]
    assert after["payload"]["name"] == "Same Time, New Name"


def _set_modified(text: str, stamp: str) -> str:
    head, sep, rest = text.partition('"modifiedOn":"')
    _, _, tail = rest.partition('"')
    return f'{head}{sep}{stamp}"{tail}'


async def test_a_modified_on_in_the_future_never_moves_the_high_water_mark_past_now(
    rig: Rig,
) -> None:
    cred = await rig.add(102)
    data = dataset(rig)
    target = data.id_at(5)
    serve_as(data, target, lambda t: _set_modified(t, "2999-01-01T00:00:00Z"))
    result = await rig.sync(cred, CUSTOMERS)
    assert result.status is SyncStatus.COMPLETED and result.records_failed == 0
    row = await rig.pool.fetchrow(
        "SELECT max_modified_on <= now() AS capped, safe_through <= now() AS safe "
        "FROM stsync.cursors WHERE credential_id = $1",
        cred.id,
    )
    assert row["capped"] and row["safe"]
    stored = await rig.pool.fetchval(
        "SELECT modified_on FROM servicetitan.customers WHERE id = $1", target
    )
    assert stored.year == 2999  # the record itself is kept as it came


async def test_a_cancel_landing_after_the_lock_was_granted_leaks_no_lock(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server granted the advisory lock, the cancel arrived before we read the answer."""
    from stsync_daemon.store import syncs as sync_log

    cred = await rig.add(102)
    real = sync_log._SQL["try_lock"]

    class Conn:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def fetchval(self, query: str, *args: Any) -> Any:
            answer = await self.inner.fetchval(query, *args)
            if query == real:
                assert answer is True
                raise asyncio.CancelledError
            return answer

    class Pool:
        def __getattr__(self, name: str) -> Any:
            return getattr(rig.pool, name)

        async def acquire(self) -> Conn:
            return Conn(await rig.pool.acquire())

        async def release(self, conn: Conn) -> None:
            await rig.pool.release(conn.inner)

    monkeypatch.setattr(rig.engine, "_pool", Pool())
    with pytest.raises(asyncio.CancelledError):
        await rig.sync(cred, CUSTOMERS)
    monkeypatch.undo()
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
    for _ in range(50):
        if await rig.pool.fetchval(held) == 0:
            break
        await asyncio.sleep(0.05)
    assert await rig.pool.fetchval(held) == 0
    # And the pair is not skipped as "already running" by the next sync.
    result = await rig.sync(cred, CUSTOMERS)
    assert result.status is SyncStatus.COMPLETED


async def test_a_wrong_secrets_key_is_the_daemons_problem_not_the_tenants(
    rig: Rig, tmp_path: Path
) -> None:
    from stsync_daemon.store.credentials import CredentialStore
    from stsync_daemon.store.crypto import SecretCipher, generate_key
    from stsync_daemon.sync.engine import SyncEngine

    cred = await rig.add(102)
    other = tmp_path / "other.key"
    other.write_text(generate_key())
    other.chmod(0o600)
    wrong = SyncEngine(
        rig.pool,
        rig.client,
        CredentialStore(rig.pool, SecretCipher.from_file(other)),
        app_key=rig.engine._app_key,
        problems=rig.engine._problems,
    )
    from stsync_daemon.sync.engine import SyncRequest

    result = await wrong.synchronize(SyncRequest(cred, CUSTOMERS))
    assert (result.status, result.error_category) == (
        SyncStatus.FAILED,
        ErrorCategory.CONFIGURATION,
    )
    assert (await rig.store.get(cred.id)).status is CredentialStatus.ACTIVE
    assert "secrets_key" in rig.problems
    no_key = SyncEngine(
        rig.pool, rig.client, rig.store, app_key=None, problems=rig.engine._problems
    )
    result = await no_key.synchronize(SyncRequest(cred, CUSTOMERS))
    assert result.error_category is ErrorCategory.CONFIGURATION
    assert (await rig.store.get(cred.id)).status is CredentialStatus.ACTIVE
    assert "app_key" in rig.problems
    # Fixed (the daemon restarted with the right key): the next sync works and health clears.
    assert (await rig.sync(cred, CUSTOMERS)).status is SyncStatus.COMPLETED
    assert rig.problems == {}


# --- PostgreSQL going away in the middle of a sync --------------------------------------------


async def test_a_sync_cut_by_a_database_restart_records_its_end_once_it_is_back(
    own_cluster: PrivateCluster, tmp_path: Path
) -> None:
    dsn = own_cluster.dsn()
    config = SandboxConfig(
        tenants=(tenant(102, customers=600, invoices=10),), export_page_size=100, seed=5
    )
    async with engine_rig(config, dsn, tmp_path) as rig:
        cred = await rig.add(102)
        rig.sandbox.set_faults(FaultRule(tenant_id=102, latency_ms=300))
        sync = asyncio.create_task(rig.sync(cred, CUSTOMERS))
        for _ in range(100):
            if await rig.pool.fetchval("SELECT count(*) FROM servicetitan.customers"):
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(own_cluster.stop)
        await asyncio.sleep(2.5)  # the next batch fails, then writing the sync's end fails too
        assert not sync.done()  # ...and is retried rather than given up
        await asyncio.to_thread(own_cluster.start)
        result = await asyncio.wait_for(sync, 60)
        assert (result.status, result.error_category) == (
            SyncStatus.FAILED,
            ErrorCategory.DATABASE,
        )
        status = await rig.pool.fetchval("SELECT status FROM stsync.sync_log")
        assert status == "failed"  # recorded, not left `running`
        rig.sandbox.set_faults()
        resumed = await rig.sync(cred, CUSTOMERS)
        assert resumed.status is SyncStatus.COMPLETED, resumed.error_message
        await rig.assert_equal_truth(102, CUSTOMERS)


@pytest.mark.parametrize(
    ("kind", "reason", "marker"),
    [
        (PoisonKind.NUL, "NUL character", b"\\u0000"),
        (PoisonKind.SURROGATE, "could not be decoded", b"\\ud800"),
        (PoisonKind.OVERFLOW, "could not be decoded", b"1e999999"),
    ],
)
async def test_every_poison_is_a_dead_letter_kept_as_received_until_fixed_upstream(
    rig: Rig, kind: PoisonKind, reason: str, marker: bytes
) -> None:
    cred = await rig.add(102)
    for data_type in DataType:
        assert (await rig.sync(cred, data_type)).status is SyncStatus.COMPLETED
        poisoned = await rig.sandbox.mutate(
            102, PROD, data_type, poison=2, poison_kind=kind, modify=3
        )
        result = await rig.sync(cred, data_type)
        assert result.status is SyncStatus.COMPLETED, result.error_message
        assert result.records_failed == len(poisoned.poisoned) == 2
        letters = await rig.pool.fetch(
            "SELECT record_id, reason, raw FROM stsync.dead_letters WHERE data_type = $1 "
            "AND resolved_at IS NULL ORDER BY record_id",
            data_type.value,
        )
        assert sorted(int(r["record_id"]) for r in letters) == sorted(poisoned.poisoned)
        assert all(reason in r["reason"] and marker in r["raw"] for r in letters)
        # Fixed upstream (the records change again): the next sync stores them and resolves both.
        for record_id in poisoned.poisoned:
            rig.sandbox.state.dataset(102, PROD, data_type).touch(record_id)
        fixed = await rig.sync(cred, data_type)
        assert (fixed.records_processed, fixed.records_failed) == (2, 0)
        await rig.assert_equal_truth(102, data_type)
    assert await rig.pool.fetchval(OPEN_LETTERS) == 0


async def test_a_bigint_in_a_payload_field_is_stored(rig: Rig) -> None:
    """Beyond int64 in a field no bigint column holds: jsonb keeps numbers of any size."""
    cred = await rig.add(102)
    poisoned = await rig.sandbox.mutate(
        102, PROD, CUSTOMERS, poison=1, poison_kind=PoisonKind.BIGINT
    )
    result = await rig.sync(cred, CUSTOMERS)
    assert (result.status, result.records_failed) == (SyncStatus.COMPLETED, 0)
    await rig.assert_equal_truth(102, CUSTOMERS)
    assert poisoned.poisoned


@pytest.fixture
async def unsorted_rig(database_dsn: str, tmp_path: Path) -> AsyncIterator[Rig]:
    config = SandboxConfig(
        tenants=(tenant(103, customers=1000, invoices=10),),
        export_page_size=50,
        seed=8,
        export_order="unsorted",
    )
    async with engine_rig(config, database_dsn, tmp_path) as made:
        yield made


async def test_an_expired_token_on_an_unsorted_export_loses_nothing(unsorted_rig: Rig) -> None:
    """A first sync cut part-way, its token expired: the restart must not trust modifiedOn order."""
    rig = unsorted_rig
    cred = await rig.add(103)
    rig.sandbox.set_faults(FaultRule(tenant_id=103, latency_ms=40))
    cut = await rig.sync(cred, CUSTOMERS, timeout_seconds=0.5)
    assert cut.status is SyncStatus.TIMED_OUT and 0 < cut.records_processed < 1000
    rig.sandbox.set_faults()
    rig.sandbox.invalidate_export_tokens(103, PROD, CUSTOMERS)  # the stored token expires
    resumed = await rig.sync(cred, CUSTOMERS)
    assert resumed.status is SyncStatus.COMPLETED, resumed.error_message
    await rig.assert_equal_truth(103, CUSTOMERS)
    # Once a pass has completed, a later expiry restarts from its high-water mark, not from 0.
    await rig.sandbox.mutate(103, PROD, CUSTOMERS, modify=4, create=2)
    rig.sandbox.invalidate_export_tokens(103, PROD, CUSTOMERS)
    after = await rig.sync(cred, CUSTOMERS)
    assert after.status is SyncStatus.COMPLETED
    assert after.records_processed < 1000
    await rig.assert_equal_truth(103, CUSTOMERS)


async def test_tokens_that_expire_between_pages_restart_a_bounded_number_of_times(
    unsorted_rig: Rig,
) -> None:
    rig = unsorted_rig
    cred = await rig.add(103)
    rig.sandbox.update_settings(export_token_ttl_seconds=0.05)
    rig.sandbox.set_faults(FaultRule(tenant_id=103, latency_ms=80))
    result = await rig.sync(cred, CUSTOMERS)
    assert (result.status, result.error_category) == (SyncStatus.FAILED, ErrorCategory.API)
    assert "continuation token" in (result.error_message or "")
    rig.sandbox.update_settings(export_token_ttl_seconds=0)
    rig.sandbox.set_faults()
    assert (await rig.sync(cred, CUSTOMERS)).status is SyncStatus.COMPLETED
    await rig.assert_equal_truth(103, CUSTOMERS)


async def test_an_export_repeating_its_token_fails_as_api_instead_of_looping(rig: Rig) -> None:
    cred = await rig.add(102)
    rig.sandbox.set_faults(FaultRule(tenant_id=102, repeat_token_share=1.0))
    result = await rig.sync(cred, CUSTOMERS, timeout_seconds=30)
    assert (result.status, result.error_category) == (SyncStatus.FAILED, ErrorCategory.API)
    assert result.duration_seconds < 10
