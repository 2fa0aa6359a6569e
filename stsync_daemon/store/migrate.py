"""Numbered `.sql` migrations, applied in order and recorded, safe to run twice and concurrently.

A database that records a migration this version does not ship was upgraded by a newer stsyncd:
running old code against it could corrupt data, so `migrate` refuses it (rolling upgrades start
the new version first; the old ones then fail to restart instead of misbehaving).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import asyncpg

from ..errors import SchemaTooNewError

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
_APPLIED_ROWS = "SELECT version, name, applied_at FROM stsync.schema_version ORDER BY version"
_HAS_VERSION_TABLE = "SELECT to_regclass('stsync.schema_version') IS NOT NULL"
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


@dataclass(frozen=True)
class MigrationState:
    """One migration as `stsyncd migrate --status` shows it."""

    version: int
    name: str
    state: str  # applied, pending, or unknown (recorded by a newer stsyncd)
    applied_at: datetime | None


async def status(conn: Conn) -> list[MigrationState]:
    """Every shipped or recorded migration with its state, in version order; changes nothing."""
    recorded: dict[int, asyncpg.Record] = {}
    if await conn.fetchval(_HAS_VERSION_TABLE):
        recorded = {row["version"]: row for row in await conn.fetch(_APPLIED_ROWS)}
    shipped = {m.version: m for m in available()}
    states = []
    for version in sorted(recorded.keys() | shipped.keys()):
        row = recorded.get(version)
        if row is None:
            states.append(MigrationState(version, shipped[version].name, "pending", None))
        else:
            state = "applied" if version in shipped else "unknown"
            states.append(MigrationState(version, row["name"], state, row["applied_at"]))
    return states


def _refuse_unknown(recorded: dict[int, str]) -> None:
    shipped = {m.version for m in available()}
    unknown = sorted(v for v in recorded if v not in shipped)
    if unknown:
        names = ", ".join(f"{v:04d}_{recorded[v]}" for v in unknown)
        raise SchemaTooNewError(
            f"the database schema has migrations this stsyncd does not ship ({names}; it knows "
            f"up to {max(shipped, default=0):04d}): a newer stsyncd upgraded it, run that version"
        )


async def check_not_newer(conn: Conn) -> None:
    """Raise `SchemaTooNewError` when the database records a migration this version lacks."""
    if await conn.fetchval(_HAS_VERSION_TABLE):
        _refuse_unknown({r["version"]: r["name"] for r in await conn.fetch(_APPLIED_ROWS)})


async def migrate(conn: Conn) -> list[Migration]:
    """Apply what is missing under a transaction-scoped advisory lock; returns what was applied.

    Refuses (`SchemaTooNewError`) a database that a newer version has migrated.
    """
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_VERSION_TABLE)
        recorded = {row["version"]: row["name"] for row in await conn.fetch(_APPLIED_ROWS)}
        _refuse_unknown(recorded)
        done = set(recorded)
        for migration in available():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(_RECORD, migration.version, migration.name)
            applied_now.append(migration)
    return applied_now


async def current_version(conn: Conn) -> int:
    """The highest applied version, 0 for an empty database."""
    exists = await conn.fetchval(_HAS_VERSION_TABLE)
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM stsync.schema_version"))


async def migrate_keeping_alive(
    conn: Conn, keep_alive: Callable[[], object], *, every: float = 10.0
) -> list[Migration]:
    """`migrate`, calling `keep_alive` now and every `every` seconds until it ends.

    A long migration (or a wait for another instance's) must not hit a start-up timeout: the
    daemon passes a callback that asks systemd for more time (EXTEND_TIMEOUT_USEC).
    """

    async def ping() -> None:
        while True:
            keep_alive()
            await asyncio.sleep(every)

    pinger = asyncio.create_task(ping(), name="stsync-migrate-keepalive")
    try:
        return await migrate(conn)
    finally:
        pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger
