"""Batches: pages converted one by one or apart (a backfill's list pages) end up the same."""

from __future__ import annotations

from typing import Any

from stsync_daemon.enums import DataType
from stsync_daemon.sync.records import new_batch


def customer(record_id: int, modified: str, name: str = "A") -> dict[str, Any]:
    return {"id": record_id, "active": True, "modifiedOn": modified, "name": name}


PAGES: list[list[Any]] = [
    [customer(1, "2026-11-01T00:00:00Z"), customer(2, "2026-11-03T00:00:00Z", "old")],
    [
        customer(2, "2026-11-02T00:00:00Z", "older"),
        "not an object",
        customer(3, "2026-11-04T00:00:00Z"),
    ],
    [customer(2, "2026-11-05T00:00:00Z", "newest"), {"id": 4}],
]


def test_absorbing_pages_converted_apart_equals_adding_them_in_turn() -> None:
    together = new_batch(DataType.CUSTOMERS)
    for number, records in enumerate(PAGES, 1):
        together.add_page(records, None, nbytes=100, list_page=number)
    apart = new_batch(DataType.CUSTOMERS)
    for number, records in enumerate(PAGES, 1):
        part = new_batch(DataType.CUSTOMERS)
        part.add_page(records, None, nbytes=100, list_page=number)
        apart.absorb(part)
    for batch in (together, apart):
        assert sorted(batch.rows) == [1, 2, 3]
        assert batch.rows[2][1] == "newest"  # the latest modifiedOn wins, whatever the order
        assert (batch.processed, batch.pages, batch.nbytes) == (7, 3, 300)
        assert batch.list_pages == [1, 2, 3]
        assert batch.max_modified is not None and batch.max_modified.day == 5
        assert [r.record_id for r in batch.rejected] == [None, "4"]
    # An older version arriving in a later page does not replace a newer one.
    late = new_batch(DataType.CUSTOMERS)
    late.add_page([customer(2, "2026-11-01T00:00:00Z", "stale")], None)
    apart.absorb(late)
    assert apart.rows[2][1] == "newest" and apart.processed == 8
