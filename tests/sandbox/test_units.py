"""Pure parts: the truth digest, time formats, the data set's ordering and tokens."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import truth_digest
from stsync_daemon.sandbox.clock import TICKS_PER_SECOND, format_ticks, parse_datetime
from stsync_daemon.sandbox.dataset import (
    BASE_END,
    BASE_START,
    START_KEY,
    UNSORTED_START,
    Dataset,
    InvalidToken,
)
from stsync_daemon.sandbox.models import ExportOrder


def test_truth_digest_formula_and_order_independence() -> None:
    rows = [(1, "2021-07-19T20:35:38.2876004Z", True), (2, "2020-01-01T00:00:00Z", False)]
    expected = (
        sum(
            int.from_bytes(
                hashlib.sha256(f"{i}|{m}|{'true' if a else 'false'}".encode()).digest()[:8]
            )
            for i, m, a in rows
        )
        % 2**64
    )
    assert truth_digest(rows) == f"{expected:016x}"
    assert truth_digest(reversed(rows)) == truth_digest(rows)
    assert truth_digest([]) == "0" * 16
    assert truth_digest(rows + rows[:1]) != truth_digest(rows)  # duplicates count
    assert truth_digest([(1, rows[0][1], False), rows[1]]) != truth_digest(rows)


@pytest.mark.parametrize(
    ("text", "formatted"),
    [
        ("2021-07-19T20:35:38.2876004Z", "2021-07-19T20:35:38.2876004Z"),
        ("2021-07-19T20:35:38.280Z", "2021-07-19T20:35:38.28Z"),
        ("2021-07-19", "2021-07-19T00:00:00Z"),
        ("2021-07-19T22:35:38+02:00", "2021-07-19T20:35:38Z"),
        ("2021-07-19T20:35:38", "2021-07-19T20:35:38Z"),
    ],
)
def test_time_round_trip(text: str, formatted: str) -> None:
    assert format_ticks(parse_datetime(text)) == formatted


@pytest.mark.parametrize("text", ["", "yesterday", "2021-02-30", "2021-13-01", "2021-01-01T25:00"])
def test_bad_dates(text: str) -> None:
    with pytest.raises(ValueError):
        parse_datetime(text)


def _dataset(count: int = 1000, seed: int = 1, data_type: DataType = DataType.CUSTOMERS) -> Dataset:
    ticks = iter(range(BASE_END + 1, BASE_END + 10**9))
    return Dataset(
        seed=seed,
        tenant_id=5,
        environment=Environment.PRODUCTION,
        data_type=data_type,
        count=count,
        customers=50,
        clock=lambda: next(ticks),
    )


def test_pages_walk_every_record_once_in_key_order() -> None:
    dataset = _dataset()
    dataset.modify(30)
    dataset.create(5)
    seen = []
    key = START_KEY
    while True:
        ids, more = dataset.page_after(key, 97)
        seen.extend(ids)
        if ids:
            key = dataset.key_of(ids[-1])
        if not more:
            break
    assert sorted(seen) == list(dataset.iter_by_id())
    keys = [dataset.key_of(i) for i in seen]
    assert keys == sorted(keys)
    assert seen == list(dataset.iter_by_modified())
    assert list(dataset.iter_by_modified(reverse=True)) == seen[::-1]


def test_tokens_round_trip_and_reject_tampering() -> None:
    dataset = _dataset()
    token = dataset.encode_token((123, 456))
    assert dataset.decode_from(token) == (123, 456)
    with pytest.raises(InvalidToken):
        dataset.decode_from(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
    other = _dataset(seed=2)
    other.tenant_id = 6
    with pytest.raises(InvalidToken):
        other.decode_from(token)
    dataset.invalidate_tokens()
    with pytest.raises(InvalidToken):
        dataset.decode_from(token)


def test_truth_is_incremental_and_equal_to_a_full_recount() -> None:
    dataset = _dataset(500)
    before = dataset.truth()
    assert before[2] == truth_digest(dataset.rows())
    dataset.modify(10)
    dataset.deactivate(10)
    dataset.create(3)
    count, active, digest, _ = dataset.truth()
    rows = list(dataset.rows())
    assert (count, digest) == (503, truth_digest(rows))
    assert active == sum(a for _, _, a in rows)


@pytest.mark.parametrize("data_type", list(DataType))
def test_record_json_text_is_canonical_json(data_type: DataType) -> None:
    dataset = _dataset(2000, data_type=data_type)
    dataset.modify(50)
    dataset.deactivate(50)
    for record_id in dataset.iter_by_id():
        text = dataset.render_json(record_id)
        assert orjson.dumps(orjson.loads(text)).decode() == text


@pytest.mark.parametrize("data_type", list(DataType))
def test_page_rendering_equals_record_rendering(data_type: DataType) -> None:
    dataset = _dataset(1500, data_type=data_type)
    before = {i: dataset.render_json(i) for i in dataset.iter_by_id()}
    changed = set(dataset.modify(40)) | set(dataset.deactivate(20)) | set(dataset.create(5))
    ids = list(dataset.iter_by_modified())
    page = dataset.render_page(ids)
    assert page == [dataset.render_json(i) for i in ids]
    after = dict(zip(ids, page, strict=True))
    assert all(after[i] != before.get(i) for i in changed)
    assert all(after[i] == before[i] for i in before if i not in changed)


def test_invoices_name_the_customers_they_reference() -> None:
    customers = _dataset(50)
    invoices = Dataset(
        seed=1,
        tenant_id=5,
        environment=Environment.PRODUCTION,
        data_type=DataType.INVOICES,
        count=300,
        customers=50,
        clock=lambda: BASE_END + 1,
    )
    names = {
        r["id"]: r["name"] for r in map(orjson.loads, customers.render_page(customers.iter_by_id()))
    }
    for invoice in map(orjson.loads, invoices.render_page(invoices.iter_by_id())):
        assert invoice["customer"]["name"] == names[invoice["customer"]["id"]]


def _export_order(dataset: Dataset) -> list[int]:
    """Untouched base records by index, then the log's latest entry of each changed record."""
    base = [dataset.id_at(k) for k in range(dataset.base_count)]
    log = [r for j, r in enumerate(dataset.log_ids) if dataset.overrides[r].seq == j]
    return [i for i in base if i not in dataset.overrides] + log


def _walk_unsorted(
    dataset: Dataset, key: tuple[int, int], limit: int, cutoff: int | None = None
) -> tuple[list[int], tuple[int, int]]:
    seen: list[int] = []
    while True:
        ids, more, key = dataset.page_unsorted(key, limit, cutoff)
        assert len(ids) <= limit
        assert not more or len(ids) == limit
        seen.extend(ids)
        if not more:
            return seen, key


@pytest.mark.parametrize("limit", [1, 7, 97, 5000])
def test_unsorted_pages_walk_every_record_once_in_id_then_log_order(limit: int) -> None:
    dataset = _dataset(1000)
    sorted_ticks = [dataset.state(i)[0] for i in dataset.iter_by_id()]
    dataset.set_order(ExportOrder.UNSORTED)
    ticks = [dataset.state(i)[0] for i in dataset.iter_by_id()]
    assert ticks != sorted_ticks and ticks != sorted(ticks)  # scrambled, not increasing
    assert all(BASE_START <= t < BASE_END for t in ticks)
    dataset.modify(30)
    dataset.create(5)
    dataset.deactivate(4)
    seen, end = _walk_unsorted(dataset, dataset.decode_from(None), limit)
    assert seen == _export_order(dataset)
    assert sorted(seen) == list(dataset.iter_by_id())
    assert end == (1000 + len(dataset.log_ids), UNSORTED_START[1])
    # Nothing new: the end key yields nothing; a change after it is all it yields.
    assert dataset.page_unsorted(end, limit) == ([], False, end)
    changed = dataset.modify(1)
    assert dataset.page_unsorted(end, limit)[0] == changed
    # The list order by modifiedOn stays sorted in this order too.
    by_modified = list(dataset.iter_by_modified())
    assert [dataset.key_of(i) for i in by_modified] == sorted(dataset.key_of(i) for i in seen)
    assert list(dataset.iter_by_modified(reverse=True)) == by_modified[::-1]


def test_unsorted_from_a_date_is_a_filter_over_the_whole_order() -> None:
    dataset = _dataset(800)
    dataset.set_order(ExportOrder.UNSORTED)
    dataset.modify(20)
    middle = sorted(dataset.state(i)[0] for i in dataset.iter_by_id())[400]
    date = format_ticks(middle)[:10]
    since = parse_datetime(date)
    seen, _ = _walk_unsorted(dataset, dataset.decode_from(date), 33)
    expected = [i for i in _export_order(dataset) if dataset.state(i)[0] >= since]
    assert seen == expected and 300 < len(seen) < 500
    # The filter travels with the token.
    first, more, key = dataset.page_unsorted(dataset.decode_from(date), 10)
    assert more and dataset.decode_from(dataset.encode_token(key)) == key
    rest, _ = _walk_unsorted(dataset, dataset.decode_from(dataset.encode_token(key)), 10)
    assert first + rest == expected


def test_unsorted_changes_during_a_walk_are_not_lost() -> None:
    dataset = _dataset(600)
    dataset.set_order(ExportOrder.UNSORTED)
    ids, more, key = dataset.page_unsorted(UNSORTED_START, 300)
    assert more
    behind, ahead = ids[10], dataset.id_at(450)
    dataset.touch(behind)
    dataset.touch(ahead)
    rest, _ = _walk_unsorted(dataset, key, 50)
    assert rest.count(ahead) == 1 and rest[-2:] == [behind, ahead]
    assert set(ids) | set(rest) == set(dataset.iter_by_id())


def test_unsorted_visibility_cutoff_stops_at_the_first_hidden_change() -> None:
    dataset = _dataset(200)
    dataset.set_order(ExportOrder.UNSORTED)
    first = dataset.modify(3)
    cutoff = dataset.state(first[-1])[0]
    later = dataset.create(2)
    seen, key = _walk_unsorted(dataset, UNSORTED_START, 64, cutoff)
    assert seen[-3:] == first and not set(later) & set(seen)
    rest, _ = _walk_unsorted(dataset, key, 64)
    assert rest == later


def test_unsorted_truth_matches_a_full_recount() -> None:
    dataset = _dataset(500)
    before = dataset.truth()
    dataset.set_order(ExportOrder.UNSORTED)
    count, active, digest, latest = dataset.truth()
    rows = list(dataset.rows())
    assert digest == truth_digest(rows) != before[2] and count == 500
    assert active == sum(a for _, _, a in rows)
    assert latest == max((m for _, m, _ in rows), key=parse_datetime)
    dataset.modify(10)
    assert dataset.truth()[2] == truth_digest(dataset.rows())


def test_tokens_carry_their_order_and_issue_time() -> None:
    dataset = _dataset()
    token = dataset.encode_token((5, 6))
    assert dataset.encode_token((5, 6)) == token  # without expiry: one token per position
    dataset.set_order(ExportOrder.UNSORTED)
    with pytest.raises(InvalidToken):
        dataset.decode_from(token)  # another order, another epoch
    now = 10**17
    fresh = dataset.encode_token((5, 6), issued=now - 4 * TICKS_PER_SECOND)
    assert dataset.decode_from(fresh) == (5, 6)
    assert dataset.decode_from(fresh, max_age=5 * TICKS_PER_SECOND, now=now) == (5, 6)
    with pytest.raises(InvalidToken):
        dataset.decode_from(fresh, max_age=3 * TICKS_PER_SECOND, now=now)
    timeless = dataset.encode_token((5, 6))
    with pytest.raises(InvalidToken):
        dataset.decode_from(timeless, max_age=3600 * TICKS_PER_SECOND, now=now)
    assert dataset.decode_from("2020-01-01") == (0, parse_datetime("2020-01-01"))
    assert dataset.decode_from(None) == UNSORTED_START
