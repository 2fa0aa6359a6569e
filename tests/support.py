"""Helpers shared by integration tests: settings aimed at a sandbox, and the database's truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from stsync_daemon.config import Settings
from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import Sandbox, TenantSpec, truth_digest
from stsync_daemon.store.crypto import generate_key

APP_KEY = "ak1.sandbox"


def write_key(directory: Path) -> Path:
    path = directory / "secrets.key"
    path.write_text(generate_key() + "\n")
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
