"""Monitoring that fires when it should, and only then: the gauges alerts read follow the database
(whoever changed it: a sync, an operator, another instance), count only what schedules sync, and
say when PostgreSQL is gone. Daemons run in-process so their registries can be read directly."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from stsync_daemon.config import ScheduleConfig, Settings
from stsync_daemon.daemon.app import Daemon
from stsync_daemon.daemon.monitoring import coverage_of
from stsync_daemon.embedded.postgres import PrivateCluster
from stsync_daemon.enums import CredentialStatus, DataTypeFilter, Environment, Trigger
from stsync_daemon.requests import ProcessRequest
from stsync_daemon.sandbox import Sandbox, SandboxConfig
from stsync_daemon.store.credentials import Credential, CredentialStore, NewCredential
from stsync_daemon.store.db import create_pool
from tests.support import settings_for, tenant, write_key

PROD, INTEG = Environment.PRODUCTION, Environment.INTEGRATION
TENANTS = (
    tenant(71, customers=30, invoices=10),
    tenant(72, customers=30, invoices=10),
    tenant(73, customers=30, invoices=10, env=INTEG),
)
# Never fires while a test runs; it only says what schedules cover.
NEVER = "0 0 1 1 *"
PRODUCTION_ONLY = {"name": "production", "cron": NEVER, "environment": "production"}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(tenants=TENANTS)) as sb:
        yield sb


def settings(
    sandbox: Sandbox, dsn: str, directory: Path, *, name: str = "node-a", **metrics: Any
) -> Settings:
    directory.mkdir(exist_ok=True)
    key = directory.parent / "secrets.key"
    base = settings_for(
        sandbox,
        dsn,
        key if key.exists() else write_key(directory.parent),
        control={"socket": str(directory / "control.sock")},
        metrics={"listen": "127.0.0.1:0", **metrics},
        cluster={"instance": name, "lease_seconds": 5},
    )
    return base.model_copy(update={"schedules": (ScheduleConfig(**PRODUCTION_ONLY),)})


def new_credential(tenant_id: int, env: Environment = PROD, **kw: Any) -> NewCredential:
    return NewCredential(
        company_id=f"co{tenant_id}",
        company_name=f"Company {tenant_id}",
        environment=env,
        tenant_id=tenant_id,
        client_id=f"cid.{env.value}.{tenant_id}",
        client_secret=SecretStr(f"cs.secret.{tenant_id}"),
        **kw,
    )


async def until(check: Callable[[], object], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for the metrics")
        await asyncio.sleep(0.05)


def sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, labels)


async def sync(daemon: Daemon, credential: Credential) -> None:
    run = await daemon.runner.start(ProcessRequest(credential_id=credential.id), Trigger.MANUAL)
    assert run.task is not None
    await run.task


async def test_a_sync_that_parks_a_credential_updates_the_error_gauges_at_once(
    sandbox: Sandbox, database_dsn: str, tmp_path: Path
) -> None:
    """No socket command, no periodic refresh (an hour away): the sync itself must tell them."""
    os.chmod(tmp_path, 0o755)
    daemon = Daemon(settings(sandbox, database_dsn, tmp_path / "a", refresh_seconds=3600))
    await daemon.start()
    try:
        # Straight into the store, as another instance would: this daemon hears nothing of it.
        credential = await daemon.credentials.add(new_credential(71))
        assert sample(daemon, "stsync_credentials", status="error") == 0
        sandbox.revoke(credential.client_id)
        await sync(daemon, credential)
        assert (await daemon.credentials.get(credential.id)).status is CredentialStatus.ERROR
        await until(lambda: sample(daemon, "stsync_credentials", status="error") == 1)
        await until(
            lambda: (
                sample(
                    daemon, "stsync_scheduled_credentials", environment="production", status="error"
                )
                == 1
            )
        )
        # The tenant lets us in again and a sync proves it: the credential leaves `error` too.
        sandbox.restore(credential.client_id)
        await sync(daemon, credential)
        await until(lambda: sample(daemon, "stsync_credentials", status="error") == 0)
        assert sample(daemon, "stsync_credentials", status="active") == 1
    finally:
        await asyncio.wait_for(daemon.stop(grace_seconds=0), 30)


async def test_every_instance_learns_what_the_others_synced(
    sandbox: Sandbox, database_dsn: str, tmp_path: Path
) -> None:
    """Node b never syncs; its copy of staleness and last success still follows node a's work."""
    os.chmod(tmp_path, 0o755)
    knobs = {"per_credential": True, "refresh_seconds": 0.2, "stale_after_hours": 1}
    a = Daemon(settings(sandbox, database_dsn, tmp_path / "a", name="node-a", **knobs))
    b = Daemon(settings(sandbox, database_dsn, tmp_path / "b", name="node-b", **knobs))
    await a.start()
    await b.start()
    try:
        credential = await a.credentials.add(new_credential(71))
        conn = await asyncpg.connect(database_dsn)
        try:
            # Registered two hours ago and never synced: stale for every instance.
            await conn.execute(
                "UPDATE stsync.credentials SET created_at = now() - interval '2 hours'"
            )
        finally:
            await conn.close()
        for node in (a, b):
            await until(
                lambda node=node: (  # type: ignore[misc]
                    sample(
                        node,
                        "stsync_stale_credentials",
                        environment="production",
                        data_type="invoices",
                    )
                    == 1
                )
            )
        await a.runner.start(ProcessRequest(credential_id=credential.id), Trigger.MANUAL)
        await until(lambda: not a.runner.running_runs)
        succeeded = (await a.credentials.last_success([credential.id]))[credential.id]
        labels = {
            "credential_id": str(credential.id),
            "company_id": "co71",
            "environment": "production",
        }
        for data_type in ("customers", "invoices"):
            at = succeeded[data_type]
            assert at is not None
            await until(
                lambda dt=data_type, at=at: (  # type: ignore[misc]
                    sample(b, "stsync_last_success_timestamp_seconds", **labels, data_type=dt)
                    == at.timestamp()
                )
            )
            await until(
                lambda dt=data_type: (  # type: ignore[misc]
                    sample(b, "stsync_stale_credentials", environment="production", data_type=dt)
                    == 0
                )
            )
    finally:
        await asyncio.wait_for(b.stop(grace_seconds=0), 30)
        await asyncio.wait_for(a.stop(grace_seconds=0), 30)


async def test_only_what_schedules_sync_counts_as_scheduled(
    sandbox: Sandbox, database_dsn: str, tmp_path: Path
) -> None:
    """Disabled, scheduled syncs off, or outside every schedule's filters: never stale, no series."""
    os.chmod(tmp_path, 0o755)
    knobs = {"per_credential": True, "refresh_seconds": 0.2, "stale_after_hours": 1}
    daemon = Daemon(settings(sandbox, database_dsn, tmp_path / "a", **knobs))
    await daemon.start()
    try:
        store = daemon.credentials
        scheduled = await store.add(new_credential(71))
        turned_off = await store.add(new_credential(72, schedule_enabled=False))
        elsewhere = await store.add(new_credential(73, env=INTEG))
        for credential in (scheduled, turned_off, elsewhere):
            await sync(daemon, credential)  # a manual sync names them all
        conn = await asyncpg.connect(database_dsn)
        try:
            await conn.execute(
                "UPDATE stsync.credentials SET created_at = now() - interval '2 hours'"
            )
            await conn.execute(
                "UPDATE stsync.cursors SET last_success_at = now() - interval '3 hours'"
            )
        finally:
            await conn.close()

        def stale(env: str) -> float | None:
            return sample(
                daemon, "stsync_stale_credentials", environment=env, data_type="customers"
            )

        await until(lambda: stale("production") == 1)
        assert stale("integration") == 0
        text = daemon.metrics.render().decode()
        assert f'credential_id="{scheduled.id}"' in text
        assert f'credential_id="{turned_off.id}"' not in text
        assert f'credential_id="{elsewhere.id}"' not in text
        # An operator disables the scheduled one: nothing is scheduled any more, nothing alerts.
        await store.set_status(scheduled.id, CredentialStatus.DISABLED)
        await until(lambda: stale("production") == 0)
        await until(lambda: "credential_id=" not in daemon.metrics.render().decode())
        assert (
            sample(
                daemon, "stsync_scheduled_credentials", environment="production", status="active"
            )
            == 0
        )
    finally:
        await asyncio.wait_for(daemon.stop(grace_seconds=0), 30)


async def test_coverage_follows_the_schedules_filters(database_dsn: str, tmp_path: Path) -> None:
    """Environment, company, credential and data type filters; disabled and retry schedules."""
    from stsync_daemon.store.crypto import SecretCipher

    pool = await create_pool(database_dsn, min_size=1, max_size=2)
    try:
        store = CredentialStore(pool, SecretCipher.from_file(write_key(tmp_path)))
        c71 = await store.add(new_credential(71))
        await store.add(new_credential(72))
        c73 = await store.add(new_credential(73, env=INTEG))
        await pool.execute("UPDATE stsync.credentials SET created_at = now() - interval '2 hours'")

        async def stale(*schedules: dict[str, Any]) -> dict[tuple[str, str], int]:
            coverage = coverage_of(
                ScheduleConfig(**{"name": f"s{i}", "cron": NEVER, **s})
                for i, s in enumerate(schedules)
            )
            rows = await store.freshness(coverage, 3600)
            return {(r["environment"], r["data_type"]): r["stale"] for r in rows if r["stale"]}

        everything = {("production", "customers"): 2, ("production", "invoices"): 2}
        everything |= {("integration", "customers"): 1, ("integration", "invoices"): 1}
        assert await stale({}) == everything
        assert await stale() == {}
        assert await stale({"enabled": False}) == {}
        assert await stale({"action": "retry"}, {"action": "report"}) == {}
        assert await stale({"environment": "integration", "data_type": "invoices"}) == {
            ("integration", "invoices"): 1
        }
        assert await stale({"company_id": "co72", "data_type": DataTypeFilter.CUSTOMERS}) == {
            ("production", "customers"): 1
        }
        # Two schedules reaching one credential count it once.
        assert await stale({"credential_id": str(c71.id)}, {"company_id": "co71"}) == {
            ("production", "customers"): 1,
            ("production", "invoices"): 1,
        }
        assert await stale({"credential_id": str(c73.id), "environment": "production"}) == {}
    finally:
        await pool.close()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


def scraped(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


async def test_database_up_and_healthz_follow_postgresql(
    own_cluster: PrivateCluster, sandbox: Sandbox, tmp_path: Path
) -> None:
    """PostgreSQL stops: /healthz says 503 and why, stsync_database_up drops to 0; and back."""
    os.chmod(tmp_path, 0o755)
    daemon = Daemon(settings(sandbox, own_cluster.dsn(), tmp_path / "a"))
    await daemon.start()
    try:
        base = f"http://{daemon.metrics_address}"
        assert (await get(f"{base}/healthz")) == (200, "ok\n")
        assert scraped((await get(f"{base}/metrics"))[1], "stsync_database_up") == 1
        await asyncio.to_thread(own_cluster.stop)
        for _ in range(200):
            status, text = await get(f"{base}/healthz")
            if status == 503:
                break
            await asyncio.sleep(0.05)
        assert status == 503 and text.startswith("degraded\n") and "PostgreSQL" in text
        assert scraped((await get(f"{base}/metrics"))[1], "stsync_database_up") == 0
        await asyncio.to_thread(own_cluster.start)
        for _ in range(200):
            status, text = await get(f"{base}/healthz")
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200
        assert scraped((await get(f"{base}/metrics"))[1], "stsync_database_up") == 1
    finally:
        await asyncio.wait_for(daemon.stop(grace_seconds=0), 30)
