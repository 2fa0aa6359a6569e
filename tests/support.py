"""Helpers shared by integration tests: settings aimed at a sandbox, the database's truth, and an
engine rig."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr

from stsync_daemon.config import Settings
from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import Sandbox, SandboxConfig, TenantSpec, truth_digest
from stsync_daemon.servicetitan import ServiceTitanClient
from stsync_daemon.store.credentials import Credential, CredentialStore, NewCredential
from stsync_daemon.store.crypto import SecretCipher, generate_key
from stsync_daemon.store.db import create_pool
from stsync_daemon.sync.engine import SyncEngine, SyncRequest, SyncResult

APP_KEY = "ak1.sandbox"
SKIP_PROMTOOL = "STSYNC_SKIP_PROMTOOL"


def promtool() -> str:
    """promtool's path; a missing one fails the test (a skip would hide an untested alert rule)
    unless $STSYNC_SKIP_PROMTOOL=1 says this machine cannot have it."""
    import os
    import shutil

    import pytest

    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get(SKIP_PROMTOOL) == "1":
        pytest.skip(f"promtool is not installed ({SKIP_PROMTOOL}=1)")
    pytest.fail(
        "promtool not found: install prometheus (sudo apt-get install prometheus), "
        f"or set {SKIP_PROMTOOL}=1 where it cannot be installed",
        pytrace=False,
    )


def write_key(directory: Path) -> Path:
    path = directory / "secrets.key"
    path.write_text(generate_key() + "\n")
    path.chmod(0o600)  # the daemon refuses a key file others may read
    return path


def settings_for(sandbox: Sandbox, dsn: str, key_file: Path, **sections: Any) -> Settings:
    """Settings whose ServiceTitan environments are the sandbox's."""
    data: dict[str, Any] = {
        "database": {"dsn": dsn},
        "secrets": {"key_file": str(key_file)},
        "servicetitan": {
            "app_key": APP_KEY,
            "environments": {
                env.value: {"auth_url": sandbox.auth_url(env), "api_url": sandbox.api_url(env)}
                for env in Environment
            },
        },
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return Settings(**data)


def tenant(tenant_id: int, env: Environment = Environment.PRODUCTION, **sizes: int) -> TenantSpec:
    return TenantSpec(
        tenant_id=tenant_id,
        environment=env,
        client_id=f"cid.{env.value}.{tenant_id}",
        client_secret=f"cs.secret.{tenant_id}",
        **sizes,
    )


async def db_truth(
    conn: asyncpg.Connection | Any, data_type: DataType, env: Environment, tenant_id: int
) -> tuple[int, str]:
    """(count, digest) of what PostgreSQL holds for one tenant, as the sandbox computes it."""
    rows = await conn.fetch(
        f"SELECT id, payload->>'modifiedOn' AS m, active FROM servicetitan.{data_type.value} "
        "WHERE environment = $1 AND tenant_id = $2",
        env.value,
        tenant_id,
    )
    return len(rows), truth_digest((r["id"], r["m"], r["active"]) for r in rows)


def daemon_settings(sandbox: Sandbox, dsn: str, key_file: Path, **sections: Any) -> dict[str, Any]:
    """A config dict for a `DaemonProcess` aimed at the sandbox."""
    data: dict[str, Any] = {
        "database": {"dsn": dsn},
        "secrets": {"key_file": str(key_file)},
        "servicetitan": {
            "app_key": APP_KEY,
            "max_retry_seconds": 20,
            "environments": {
                env.value: {"auth_url": sandbox.auth_url(env), "api_url": sandbox.api_url(env)}
                for env in Environment
            },
        },
        "sync": {"commit_batch_records": 250, "shutdown_grace_seconds": 1},
        "metrics": {"listen": "127.0.0.1:0"},  # several daemons at once must not want one port
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return data


def credential_body(spec: TenantSpec, company_id: str | None = None) -> dict[str, Any]:
    return {
        "company_id": company_id or f"co{spec.tenant_id}",
        "company_name": f"Company {spec.tenant_id}",
        "environment": spec.environment.value,
        "tenant_id": spec.tenant_id,
        "client_id": spec.client_id,
        "client_secret": spec.client_secret,
    }


@dataclass
class Rig:
    """The sync engine wired to a sandbox and a real PostgreSQL, as the daemon wires it."""

    sandbox: Sandbox
    pool: asyncpg.Pool
    store: CredentialStore
    engine: SyncEngine
    client: ServiceTitanClient
    problems: dict[str, str]
    settings: Settings

    async def add(
        self, tenant_id: int, env: Environment = Environment.PRODUCTION, secret: str | None = None
    ) -> Credential:
        return await self.store.add(
            NewCredential(
                company_id=f"co{tenant_id}",
                company_name=f"Company {tenant_id}",
                environment=env,
                tenant_id=tenant_id,
                client_id=f"cid.{env.value}.{tenant_id}",
                client_secret=SecretStr(secret or f"cs.secret.{tenant_id}"),
            )
        )

    async def sync(self, credential: Credential, data_type: DataType, **kw: Any) -> SyncResult:
        return await self.engine.synchronize(SyncRequest(credential, data_type, **kw))

    async def assert_equal_truth(
        self, tenant_id: int, data_type: DataType, env: Environment = Environment.PRODUCTION
    ) -> None:
        truth = self.sandbox.truth(tenant_id, env, data_type)
        async with self.pool.acquire() as conn:
            count, digest = await db_truth(conn, data_type, env, tenant_id)
        assert (count, digest) == (truth.count, truth.digest)


@contextlib.asynccontextmanager
async def engine_rig(
    config: SandboxConfig,
    dsn: str,
    directory: Path,
    *,
    pool_max_size: int | None = None,
    **sections: Any,
) -> AsyncIterator[Rig]:
    """A sandbox, a pool, a credential store and an engine that batches 250 records.

    `sections` add to the settings (e.g. `sync={"max_concurrent_total": 2}`); `pool_max_size`
    sizes the pool regardless of them, to stage what the settings would refuse.
    """
    async with Sandbox(config) as sandbox:
        sections.setdefault("servicetitan", {}).setdefault("max_retry_seconds", 20)
        sections.setdefault("sync", {}).setdefault("commit_batch_records", 250)
        settings = settings_for(sandbox, dsn, write_key(directory), **sections)
        size = pool_max_size or settings.database.pool_max_size
        pool = await create_pool(dsn, min_size=1, max_size=size)
        client = ServiceTitanClient(settings.servicetitan)
        await client.__aenter__()
        store = CredentialStore(pool, SecretCipher.from_file(settings.secrets.key_file))
        problems: dict[str, str] = {}

        def report(subject: str, message: str | None) -> None:
            if message is None:
                problems.pop(subject, None)
            else:
                problems[subject] = message

        engine = SyncEngine(
            pool,
            client,
            store,
            app_key=settings.servicetitan.resolve_app_key(),
            commit_batch_records=250,
            instance="test",
            problems=report,
            backfill_min_records=settings.sync.backfill_min_records,
            backfill_concurrency=settings.sync.backfill_concurrency,
            backfill_page_size=settings.sync.backfill_page_size,
        )
        try:
            yield Rig(sandbox, pool, store, engine, client, problems, settings)
        finally:
            await client.close()
            await pool.close()
