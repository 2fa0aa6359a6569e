"""A subscriber's event queue: bounded by dropping progress, never the events a stream needs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stsync_daemon.daemon.events import EventQueue


def progress(records: int) -> dict[str, Any]:
    return {"event": "sync.progress", "records_processed": records}


def event(kind: str, n: int = 0) -> dict[str, Any]:
    return {"event": kind, "n": n}


async def take_all(queue: EventQueue) -> list[dict[str, Any] | None]:
    out = []
    while not queue.empty():
        out.append(await queue.get())
    return out


async def test_a_reader_that_never_reads_gets_at_most_the_bound_and_the_end_last() -> None:
    queue = EventQueue(bound=50)
    queue.put_nowait(event("run.started"))
    for sync in range(3):
        queue.put_nowait(event("sync.started", sync))
        for records in range(1000):
            queue.put_nowait(progress(sync * 1000 + records))
        queue.put_nowait(event("sync.finished", sync))
    queue.put_nowait(event("run.finished"))
    queue.put_nowait(None)
    assert queue.qsize() <= 50
    events = await take_all(queue)
    assert events[0] == event("run.started")
    assert events[-2:] == [event("run.finished"), None]
    kinds = [e["event"] for e in events if e is not None]
    assert [e for e in kinds if e != "sync.progress"] == [
        "run.started",
        *["sync.started", "sync.finished"] * 3,
        "run.finished",
    ]
    # What is left of progress is the newest, in order.
    kept = [
        e["records_processed"] for e in events if e is not None and e["event"] == "sync.progress"
    ]
    assert kept == sorted(kept) and kept[-1] == 2999
    assert queue.dropped == 3000 - len(kept)


async def test_the_events_a_stream_needs_are_kept_even_beyond_the_bound() -> None:
    queue = EventQueue(bound=3)
    for n in range(5):
        queue.put_nowait(event("sync.finished", n))
    queue.put_nowait(progress(1))  # no progress to drop: the new one goes
    queue.put_nowait(None)
    assert await take_all(queue) == [*(event("sync.finished", n) for n in range(5)), None]
    assert queue.dropped == 1


async def test_under_the_bound_nothing_is_dropped() -> None:
    queue = EventQueue(bound=10)
    sent = [event("run.started"), progress(1), progress(2), event("run.finished"), None]
    for item in sent:
        queue.put_nowait(item)
    assert await take_all(queue) == sent and queue.dropped == 0


async def test_get_waits_for_an_event_and_a_cancelled_wait_loses_nothing() -> None:
    queue = EventQueue()
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    queue.put_nowait(event("run.started"))
    assert await asyncio.wait_for(waiter, 1) == event("run.started")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.01)
    queue.put_nowait(event("run.finished"))
    assert await asyncio.wait_for(queue.get(), 1) == event("run.finished")


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EventQueue(bound=0)
