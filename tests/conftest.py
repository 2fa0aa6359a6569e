"""Shared fixtures: one throwaway PostgreSQL cluster per test session, a fresh database per test."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from stsync_daemon.embedded.postgres import PrivateCluster
from stsync_daemon.errors import ConfigError
from stsync_daemon.store.migrate import migrate

TEMPLATE_DB = "stsync_template"
_counter = itertools.count()


def _start(cluster: PrivateCluster) -> None:
    """Start it, or end the whole session in one line saying what to install (not one error per
    test)."""
    try:
        cluster.start()
    except ConfigError as exc:
        pytest.exit(f"stsync tests need PostgreSQL: {exc}", returncode=2)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PrivateCluster]:
    """A private cluster on a temporary Unix socket, run as an unprivileged user when we are root."""
    base = Path(tempfile.mkdtemp(prefix="stsync-pg-"))
    os.chmod(base, 0o755)
    cluster = PrivateCluster(base / "pg", fsync=False)
    _start(cluster)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
async def pg_template(pg_cluster: PrivateCluster) -> str:
    """A migrated template database that every test database is cloned from."""
    admin = await asyncpg.connect(pg_cluster.dsn())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg_cluster.dsn(TEMPLATE_DB))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return TEMPLATE_DB


async def _admin(cluster: PrivateCluster, statement: str) -> None:
    admin = await asyncpg.connect(cluster.dsn())
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture
async def database_dsn(pg_cluster: PrivateCluster, pg_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    await _admin(pg_cluster, f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    yield pg_cluster.dsn(name)
    await _admin(pg_cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def own_cluster() -> AsyncIterator[PrivateCluster]:
    """A migrated cluster of this test's own, for tests that stop and start PostgreSQL."""
    base = Path(tempfile.mkdtemp(prefix="stsync-own-pg-"))
    os.chmod(base, 0o755)
    cluster = PrivateCluster(base / "pg", fsync=False)
    _start(cluster)
    try:
        conn = await asyncpg.connect(cluster.dsn())
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def empty_database_dsn(pg_cluster: PrivateCluster) -> AsyncIterator[str]:
    """A fresh database with no schema, for migration tests."""
    name = f"e_{os.getpid()}_{next(_counter)}"
    await _admin(pg_cluster, f"CREATE DATABASE {name}")
    yield pg_cluster.dsn(name)
    await _admin(pg_cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
