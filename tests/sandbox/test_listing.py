"""List pages in process: every query against a brute-force reference, and what a page costs."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox.dataset import BASE_END, Dataset
from stsync_daemon.sandbox.listing import ListPage, ListQuery, SortField, select
from stsync_daemon.sandbox.models import ExportOrder


def _dataset(
    count: int = 600, data_type: DataType = DataType.CUSTOMERS, order: ExportOrder | None = None
) -> Dataset:
    ticks = iter(range(BASE_END + 1, BASE_END + 10**9))
    dataset = Dataset(
        seed=3,
        tenant_id=9,
        environment=Environment.PRODUCTION,
        data_type=data_type,
        count=count,
        customers=50,
        clock=lambda: next(ticks),
    )
    if order is not None:
        dataset.set_order(order)
    return dataset


def _reference(dataset: Dataset, query: ListQuery) -> ListPage:
    """What the page must be: filter every record, sort them all, slice."""
    rows = []
    for record_id in range(dataset.id_at(0), dataset.id_at(dataset.total)):
        if query.ids is not None and record_id not in query.ids:
            continue
        ticks, active, _, created = dataset.state(record_id)
        if query.matches(ticks, active, created):
            key = {SortField.ID: 0, SortField.MODIFIED_ON: ticks, SortField.CREATED_ON: created}
            rows.append((key[query.sort], record_id))
    ordered = [record_id for _, record_id in sorted(rows, reverse=query.descending)]
    ids = ordered[query.offset : query.offset + query.page_size]
    return ListPage(ids, query.offset + len(ids) < len(ordered), len(ordered))


def _queries(dataset: Dataset) -> list[ListQuery]:
    stamps = sorted(dataset.state(i)[0] for i in range(dataset.id_at(0), dataset.id_at(100)))
    created = sorted(dataset.state(i)[3] for i in range(dataset.id_at(0), dataset.id_at(100)))
    some_ids = (dataset.id_at(3), dataset.id_at(1), dataset.id_at(dataset.total - 1), 1)
    filters: list[dict[str, object]] = [
        {},
        {"modified_from": stamps[40]},
        {"modified_before": stamps[60], "created_from": created[10]},
        {"created_before": created[70]},
        {"ids": some_ids},
        {"modified_from": BASE_END},  # only what changed
    ]
    queries = []
    for extra, active, sort, descending, (page, size) in itertools.product(
        filters,
        (None, True, False),
        SortField,
        (False, True),
        ((1, 50), (3, 37), (7, 100), (1, 5000), (40, 25)),
    ):
        queries.append(
            ListQuery(
                page=page,
                page_size=size,
                active=active,
                sort=sort,
                descending=descending,
                **extra,  # type: ignore[arg-type]
            )
        )
    return queries


def _check_all(dataset: Dataset) -> None:
    for query in _queries(dataset):
        assert select(dataset, query) == _reference(dataset, query), query


@pytest.mark.parametrize("order", list(ExportOrder))
@pytest.mark.parametrize("data_type", list(DataType))
def test_pages_match_the_reference_before_and_after_changes(
    order: ExportOrder, data_type: DataType
) -> None:
    dataset = _dataset(data_type=data_type, order=order)
    _check_all(dataset)  # builds the indexes
    dataset.modify(40)
    dataset.deactivate(30)
    dataset.create(25)
    inactive = dataset.inactive_ids()[0]
    dataset.touch(inactive, active=True)  # reactivated: leaves the inactive index
    dataset.touch(dataset.id_at(dataset.total - 1), active=False)  # a new record deactivated
    assert dataset.inactive_ids() == sorted(
        i for i in range(dataset.id_at(0), dataset.id_at(dataset.total)) if not dataset.state(i)[1]
    )
    _check_all(dataset)


def test_an_empty_data_set_lists_nothing() -> None:
    dataset = _dataset(count=0)
    for query in (ListQuery(), ListQuery(active=True, descending=True), ListQuery(page=3)):
        assert select(dataset, query) == ListPage([], False, 0)


def _count_base_calls(dataset: Dataset) -> Callable[[], int]:
    """Count how many records the data set generates from now on."""
    calls = 0
    inner = dataset._base

    def counting(index: int) -> tuple[int, bool, int, int]:
        nonlocal calls
        calls += 1
        return inner(index)

    dataset._base = counting
    return lambda: calls


def test_id_order_pages_cost_no_scan_whatever_the_page_number() -> None:
    # A billion records: reaching the last page by skipping would never finish.
    huge = _dataset(count=1_000_000_000)
    last = select(huge, ListQuery(page=200_000, page_size=5000))
    assert last.total == 1_000_000_000 and not last.has_more
    assert last.ids[-1] == huge.id_at(999_999_999) and len(last.ids) == 5000
    top = select(huge, ListQuery(page=2, page_size=3, descending=True))
    assert top.ids == [huge.id_at(999_999_996), huge.id_at(999_999_995), huge.id_at(999_999_994)]

    dataset = _dataset(count=200_000)
    select(dataset, ListQuery(active=True))  # builds the inactive index once
    select(dataset, ListQuery(sort=SortField.CREATED_ON))  # and the creation order
    generated = _count_base_calls(dataset)
    for query in (
        ListQuery(page=37, page_size=5000, active=True),
        ListQuery(page=30, page_size=5000, active=True, descending=True),
        ListQuery(page=2, page_size=5000, active=False),
        ListQuery(page=39, page_size=5000, sort=SortField.CREATED_ON, descending=True),
    ):
        assert select(dataset, query).ids
    dataset.deactivate(10)  # keeping the index current costs a lookup per change
    dataset.create(10)
    before = generated()
    assert len(select(dataset, ListQuery(page=37, page_size=5000, active=True)).ids) == 5000
    assert generated() == before
    assert generated() <= 30  # the changes themselves: one state lookup each


def test_other_listings_are_scanned_once_per_change_of_the_data() -> None:
    dataset = _dataset(count=5000)
    generated = _count_base_calls(dataset)
    query = ListQuery(page_size=100, active=True, sort=SortField.MODIFIED_ON, descending=True)
    first = select(dataset, query)
    scanned = generated()
    assert scanned >= 5000
    pages = [select(dataset, ListQuery(**{**_fields(query), "page": page})) for page in (2, 3, 4)]
    assert generated() == scanned  # later pages slice the same materialised listing
    assert len({*first.ids, *itertools.chain.from_iterable(p.ids for p in pages)}) == 400
    dataset.modify(1)
    select(dataset, query)
    assert generated() >= 2 * scanned  # the data changed: listed again


def _fields(query: ListQuery) -> dict[str, object]:
    return {name: getattr(query, name) for name in ListQuery.__slots__}
