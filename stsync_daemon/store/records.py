"""The record tables (`servicetitan.customers`, `servicetitan.invoices`): stage, merge, analyze.

A batch is copied into a session's temporary stage table and merged from there, never replacing a
newer version of a row; the first sync of an empty tenant copies straight into the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from .sql import load

_SQL = load("records.sql")
# The session's temporary stage table of each record table (created by `create_stage`).
STAGE_TABLES = {"customers": "stsync_stage_customers", "invoices": "stsync_stage_invoices"}


async def create_stage(conn: asyncpg.Connection, table: str) -> None:
    """The session's stage table for `table` (customers or invoices), emptied at each commit."""
    await conn.execute(_SQL["create_stage_" + table])


async def clear_stage(conn: asyncpg.Connection, table: str) -> None:
    await conn.execute(_SQL["clear_stage_" + table])


async def stage_and_merge(
    conn: asyncpg.Connection,
    table: str,
    rows: Iterable[Sequence[Any]],
    columns: Sequence[str],
    environment: str,
    tenant_id: int,
) -> None:
    """One binary COPY into the stage table, then the merge into the table for one tenant."""
    await conn.copy_records_to_table(STAGE_TABLES[table], records=rows, columns=columns)
    await conn.execute(_SQL["merge_" + table], environment, tenant_id)


async def copy_direct(
    conn: asyncpg.Connection,
    table: str,
    rows: Iterable[Sequence[Any]],
    columns: Sequence[str],
    environment: str,
    tenant_id: int,
) -> None:
    """One binary COPY straight into the table: the cheapest write there is (empty tenant only)."""
    await conn.copy_records_to_table(
        table,
        schema_name="servicetitan",
        records=[(environment, tenant_id, *row) for row in rows],
        columns=("environment", "tenant_id", *columns),
    )


async def analyze(conn: asyncpg.Connection, table: str) -> None:
    """Planner statistics, after rows were copied straight in."""
    await conn.execute(_SQL["analyze_" + table])
