"""Retention: history older than `[retention]` says is pruned, a small batch at a time.

Each batch is one short statement (the oldest `batch_size` rows of one kind), so pruning years of
history on the first pass never holds locks for long nor starves the syncs; between batches the
loop yields. Any instance may prune: the statements are idempotent, and two instances pruning at
once only share the work. A database outage ends the pass; the next one takes over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from ..config import RetentionConfig
from ..logs import log_event
from ..store.db import DB_ERRORS, describe_db_error
from ..store.runs import RunStore
from ..store.syncs import SyncStore

logger = logging.getLogger(__name__)
Prune = Callable[[datetime, int], Awaitable[int]]
# A pause between batches: other work gets the database in between.
_BETWEEN_BATCHES_SECONDS = 0.05


class Retention:
    """Prunes the sync log, runs and resolved dead letters past their configured age."""

    def __init__(self, config: RetentionConfig, syncs: SyncStore, runs: RunStore) -> None:
        self._config = config
        self._kinds: tuple[tuple[str, int, Prune], ...] = (
            ("sync_log", config.sync_log_days, syncs.prune),
            ("runs", config.runs_days, runs.prune),
            ("dead_letters", config.dead_letters_days, syncs.prune_dead_letters),
        )

    async def loop(self) -> None:
        """Prune now and then every `interval_seconds` (supervised by the health board)."""
        while True:
            await self.prune_once()
            await asyncio.sleep(self._config.interval_seconds)

    async def prune_once(self, now: datetime | None = None) -> dict[str, int]:
        """One pass over every kind; how many rows of each went."""
        now = now or datetime.now(UTC)
        pruned: dict[str, int] = {}
        try:
            for kind, days, prune in self._kinds:
                if days <= 0:
                    continue
                before = now - timedelta(days=days)
                total = 0
                while True:
                    gone = await prune(before, self._config.batch_size)
                    total += gone
                    if gone < self._config.batch_size:
                        break
                    await asyncio.sleep(_BETWEEN_BATCHES_SECONDS)
                if total:
                    pruned[kind] = total
        except DB_ERRORS as exc:
            log_event(
                logger, logging.WARNING, "retention.failed", error=describe_db_error(exc), **pruned
            )
            return pruned
        if pruned:
            log_event(logger, logging.INFO, "retention.pruned", **pruned)
        return pruned
