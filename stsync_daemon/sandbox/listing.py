"""Pages of the list endpoints (`GET …/customers`, `GET …/invoices`): offset paging, filters, sorts.

A page is `page`/`pageSize` positions into the records that match *at the moment of the request*, as an
SQL `OFFSET … LIMIT` over the live table would give; nothing is held between requests. So, as with
any page-numbered API (ServiceTitan's lists are), a listing read page by page while the data changes
is not a snapshot:

- a record that stops matching a filter (a customer deactivated under the default `active=True`) moves
  every later record one position back: the record at the start of the next page is never served;
- a record that starts matching (reactivated), or one created ahead of the current page (under
  `sort=-Id` every new record, as new records get the highest ids), moves later records one forward:
  the last record of a page is served again at the top of the next;
- under `sort=±ModifiedOn` every modification moves the record to the newest end, so both happen.
  `active=Any` with `sort=+Id` (or `+CreatedOn`) is what new and changed records cannot disturb: they
  either keep their place or land after everything read so far. Changes made while reading are found
  afterwards by an export `from` a time before the listing started.

Lists show every change at once: the export's visibility delay (`visibility_delay_seconds`, unless
`includeRecentChanges=true`) does not apply to them.

Cost: the common listings (id order with the `active` filter only; creation order with no filter) use
incremental indexes: O(log n + pageSize) per page whatever the page number. Others (date filters, or
`ModifiedOn` order) are materialised once per state of the data set and then sliced, so paging through
them costs one O(n) pass per change of the data, not one per page.
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from .dataset import Dataset


class SortField(StrEnum):
    """The fields a list may be sorted by (the spec: "Available fields are: Id, ModifiedOn, CreatedOn")."""

    ID = "Id"
    MODIFIED_ON = "ModifiedOn"
    CREATED_ON = "CreatedOn"


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A parsed list request; dates are ticks, `active` None means any."""

    page: int = 1
    page_size: int = 50
    include_total: bool = False
    ids: tuple[int, ...] | None = None
    active: bool | None = None
    modified_from: int | None = None
    modified_before: int | None = None
    created_from: int | None = None
    created_before: int | None = None
    sort: SortField = SortField.ID
    descending: bool = False

    @property
    def offset(self) -> int:
        """How many matching records come before this page."""
        return (self.page - 1) * self.page_size

    @property
    def has_dates(self) -> bool:
        """Whether a modified or created date filter is given."""
        return (
            self.modified_from is not None
            or self.modified_before is not None
            or self.created_from is not None
            or self.created_before is not None
        )

    def matches(self, ticks: int, active: bool, created: int) -> bool:
        """Whether a record in this state passes every filter but `ids`."""
        return (
            (self.active is None or active is self.active)
            and (self.modified_from is None or ticks >= self.modified_from)
            and (self.modified_before is None or ticks < self.modified_before)
            and (self.created_from is None or created >= self.created_from)
            and (self.created_before is None or created < self.created_before)
        )


class ListPage(NamedTuple):
    """The ids of one page, whether more match after it, and how many match in all."""

    ids: list[int]
    has_more: bool
    total: int


# Materialised listings kept per data set (each an array of 8-byte ids).
MATERIALISED_PER_DATASET = 4


def select(dataset: Dataset, query: ListQuery) -> ListPage:
    """The page `query` asks for, from the data set as it is now."""
    if query.ids is not None:
        return _select_ids(dataset, query)
    if not query.has_dates and query.sort is SortField.ID:
        return _select_by_id(dataset, query)
    if not query.has_dates and query.active is None and query.sort is SortField.CREATED_ON:
        return _select_by_created(dataset, query)
    ids = _materialised(dataset, query)
    return _slice(ids, query)


def _slice(ids: Sequence[int], query: ListQuery) -> ListPage:
    total = len(ids)
    offset = query.offset
    if query.descending:
        stop = max(0, total - offset)
        start = max(0, stop - query.page_size)
        out = list(ids[start:stop])
        out.reverse()
    else:
        out = list(ids[offset : offset + query.page_size])
    return ListPage(out, offset + len(out) < total, total)


def _select_ids(dataset: Dataset, query: ListQuery) -> ListPage:
    """At most 50 ids: filter and sort them directly."""
    assert query.ids is not None
    found = []
    for record_id in set(query.ids):
        if dataset.index_of(record_id) is None:
            continue
        ticks, active, _, created = dataset.state(record_id)
        if query.matches(ticks, active, created):
            key = {SortField.ID: 0, SortField.MODIFIED_ON: ticks, SortField.CREATED_ON: created}
            found.append((key[query.sort], record_id))
    found.sort()
    return _slice([record_id for _, record_id in found], query)


def _select_by_id(dataset: Dataset, query: ListQuery) -> ListPage:
    """Id order with only the `active` filter: positions found by binary search over the (few)
    inactive ids, then a walk of at most pageSize active ids plus the inactive ones among them."""
    first = dataset.id_at(0)
    count = dataset.total
    offset, limit = query.offset, query.page_size
    if query.active is None:
        if query.descending:
            top = first + count - 1 - offset
            out = list(range(top, max(first, top - limit + 1) - 1, -1))
        else:
            out = list(range(first + offset, min(first + count, first + offset + limit)))
        return ListPage(out, offset + len(out) < count, count)
    inactive = dataset.inactive_ids()
    if query.active is False:
        return _slice(inactive, query)
    total = count - len(inactive)
    if offset >= total:
        return ListPage([], False, total)
    position = total - 1 - offset if query.descending else offset
    # inactive[i] - first - i active ids precede inactive[i]: the active id at `position` follows
    # exactly the inactive ids with at most `position` active ids before them.
    below = bisect.bisect_right(
        range(len(inactive)), position, key=lambda i: inactive[i] - first - i
    )
    record_id = first + position + below
    out = []
    if query.descending:
        j = below - 1
        while len(out) < limit and record_id >= first:
            if j >= 0 and inactive[j] == record_id:
                j -= 1
            else:
                out.append(record_id)
            record_id -= 1
    else:
        j, end = below, first + count
        while len(out) < limit and record_id < end:
            if j < len(inactive) and inactive[j] == record_id:
                j += 1
            else:
                out.append(record_id)
            record_id += 1
    return ListPage(out, offset + len(out) < total, total)


def _select_by_created(dataset: Dataset, query: ListQuery) -> ListPage:
    """Creation order, no filter: the base records' fixed order, then the records created since."""
    by_created = dataset.base_ids_by_created()
    base = len(by_created)
    total = dataset.total
    offset, limit = query.offset, query.page_size
    if query.descending:
        stop = max(0, total - offset)
        positions: Iterable[int] = range(stop - 1, max(0, stop - limit) - 1, -1)
    else:
        positions = range(offset, min(total, offset + limit))
    first = dataset.id_at(0)
    out = [by_created[p] if p < base else first + p for p in positions]
    return ListPage(out, offset + len(out) < total, total)


def _materialised(dataset: Dataset, query: ListQuery) -> array[int]:
    """Every matching id in ascending sort order, computed once per state of the data set."""
    cache = dataset.listings
    key = (
        query.active,
        query.modified_from,
        query.modified_before,
        query.created_from,
        query.created_before,
        query.sort,
    )
    hit = cache.get(key)
    if hit is not None and hit[0] == dataset.generation:
        cache.move_to_end(key)
        return hit[1]
    ids = array("q", _matching(dataset, query))
    cache[key] = (dataset.generation, ids)
    cache.move_to_end(key)
    while len(cache) > MATERIALISED_PER_DATASET:
        cache.popitem(last=False)
    return ids


def _matching(dataset: Dataset, query: ListQuery) -> Iterator[int]:
    candidates: Iterable[int]
    if query.sort is SortField.MODIFIED_ON:
        candidates = dataset.iter_by_modified()
    elif query.sort is SortField.CREATED_ON:
        first, base = dataset.id_at(0), dataset.base_count
        by_created = dataset.base_ids_by_created()
        candidates = itertools.chain(by_created, range(first + base, first + dataset.total))
    else:
        candidates = dataset.iter_by_id()
    state, matches = dataset.state, query.matches
    for record_id in candidates:
        ticks, active, _, created = state(record_id)
        if matches(ticks, active, created):
            yield record_id
