"""Pure parts: the truth digest, time formats, the data set's ordering and tokens."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import truth_digest
from stsync_daemon.sandbox.clock import format_ticks, parse_datetime
from stsync_daemon.sandbox.dataset import BASE_END, START_KEY, Dataset, InvalidToken


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
