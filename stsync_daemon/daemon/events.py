"""A run's events on their way to one subscriber: bounded, and never losing what a stream needs.

A subscriber that reads slowly or not at all (a client that stopped reading its socket) must not
grow the daemon's memory, nor hold up the run: its queue keeps at most `bound` events. What gives
way is progress: a `sync.progress` event only says "so far", and the next one supersedes it. When
the queue is full the oldest queued progress event makes room; with none queued, a new progress
event is dropped. Every other event (`run.started`, `sync.started`, `sync.finished`,
`run.finished`, `error`) and the end-of-stream None are always kept, in order: there are two per
sync, so they can outgrow the bound only as much as the run itself is large.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from ..views import EVENT_SYNC_PROGRESS

SUBSCRIBER_BOUND = 1000


def _is_progress(event: dict[str, Any] | None) -> bool:
    return event is not None and event.get("event") == EVENT_SYNC_PROGRESS


class EventQueue:
    """One subscriber's events, oldest first; `put_nowait` never blocks nor raises."""

    def __init__(self, bound: int = SUBSCRIBER_BOUND) -> None:
        if bound < 1:
            raise ValueError("bound must be at least 1")
        self.bound = bound
        self.dropped = 0  # progress events this subscriber never got
        self._events: deque[dict[str, Any] | None] = deque()
        self._progress = 0  # how many of the queued events are progress
        self._ready = asyncio.Event()

    def qsize(self) -> int:
        return len(self._events)

    def empty(self) -> bool:
        return not self._events

    def put_nowait(self, event: dict[str, Any] | None) -> None:
        """Queue an event; when full, progress gives way (see the module's docstring)."""
        if len(self._events) >= self.bound:
            if self._progress:
                self._drop_oldest_progress()
            elif _is_progress(event):
                self.dropped += 1
                return
        self._events.append(event)
        self._progress += _is_progress(event)
        self._ready.set()

    def _drop_oldest_progress(self) -> None:
        # Progress events stream in while the others are rare, so the oldest is near the front.
        for index, queued in enumerate(self._events):
            if _is_progress(queued):
                del self._events[index]
                self._progress -= 1
                self.dropped += 1
                return

    async def get(self) -> dict[str, Any] | None:
        """The oldest event, waiting for one; cancelling the wait loses nothing."""
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        event = self._events.popleft()
        self._progress -= _is_progress(event)
        return event


class Stream:
    """One client's view of a run: its events, and `close` to leave (the run goes on)."""

    def __init__(self, queue: EventQueue, leave: Callable[[], None]) -> None:
        self._queue = queue
        self._leave = leave

    async def get(self) -> dict[str, Any] | None:
        return await self._queue.get()

    def close(self) -> None:
        self._leave()
