"""Numbered `.sql` migrations, applied in order and recorded, safe to run twice and concurrently."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn = asyncpg.Connection | PoolConnectionProxy[Any]

# Any fixed 64-bit key: serializes migrators across processes and hosts.
_MIGRATION_LOCK_KEY = 0x5751_C0DE_0001

_CREATE_VERSION_TABLE = """
CREATE SCHEMA IF NOT EXISTS stsync;
CREATE TABLE IF NOT EXISTS stsync.schema_version (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
_APPLIED = "SELECT version FROM stsync.schema_version"
_RECORD = "INSERT INTO stsync.schema_version (version, name) VALUES ($1, $2)"


@dataclass(frozen=True)
class Migration:
    """One numbered file under `store/migrations/`."""

    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with this version, in order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: Conn) -> list[Migration]:
    """Apply what is missing under a transaction-scoped advisory lock; returns what was applied."""
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_VERSION_TABLE)
        done = {row["version"] for row in await conn.fetch(_APPLIED)}
        for migration in available():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(_RECORD, migration.version, migration.name)
            applied_now.append(migration)
    return applied_now


async def current_version(conn: Conn) -> int:
    """The highest applied version, 0 for an empty database."""
    exists = await conn.fetchval("SELECT to_regclass('stsync.schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM stsync.schema_version"))
