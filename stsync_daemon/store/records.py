"""The record tables (`servicetitan.customers`, `servicetitan.invoices`): stage, merge, analyze.

A batch is copied into a session's temporary stage table and merged from there, never replacing a
newer version of a row; the first sync of an empty tenant copies straight into the table.
"""

from __future__ import annotations

import asyncpg

from .sql import load

_SQL = load("records.sql")


async def create_stage(conn: asyncpg.Connection, table: str) -> None:
    """The session's stage table for `table` (customers or invoices), emptied at each commit."""
    await conn.execute(_SQL["create_stage_" + table])


async def clear_stage(conn: asyncpg.Connection, table: str) -> None:
    await conn.execute(_SQL["clear_stage_" + table])


async def merge(conn: asyncpg.Connection, table: str, environment: str, tenant_id: int) -> None:
    """The staged rows into the table for one tenant."""
    await conn.execute(_SQL["merge_" + table], environment, tenant_id)


async def analyze(conn: asyncpg.Connection, table: str) -> None:
    """Planner statistics, after rows were copied straight in."""
    await conn.execute(_SQL["analyze_" + table])
