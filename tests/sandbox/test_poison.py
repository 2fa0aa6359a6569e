"""Poisoned records: text JSON decoders refuse or mangle, served byte for byte until fixed upstream."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import aiohttp
import orjson
import pytest

from stsync_daemon.enums import DataType
from stsync_daemon.sandbox import PoisonKind, Sandbox, truth_digest
from stsync_daemon.sandbox.clock import parse_datetime
from stsync_daemon.sandbox.dataset import poison_json

from .conftest import CUSTOMERS, INVOICES, PROD, StClient
from .test_units import _dataset

# Where each poison lands, per data type: (string field, numeric field).
FIELDS = {CUSTOMERS: ("name", "creditLimit"), INVOICES: ("summary", "taxRate")}


async def export_text(client: StClient, data_type: DataType, from_: str | None = None) -> list[Any]:
    """Every record of the export from `from_`, read with the standard library's lenient decoder
    (it takes lone surrogates, huge integers and 1e999999 as they are)."""
    records: list[Any] = []
    while True:
        reply = await client.export_page(data_type, from_)
        assert reply.status == 200, reply.body
        page = json.loads(reply.body)
        records.extend(page["data"])
        from_ = page["continueFrom"]
        if not page["hasMore"]:
            return records


def numeric(record: dict[str, Any], data_type: DataType) -> Any:
    return record["creditLimit"] if data_type is CUSTOMERS else record["salesTaxCode"]["taxRate"]


@pytest.mark.parametrize("data_type", [CUSTOMERS, INVOICES])
@pytest.mark.parametrize("kind", list(PoisonKind))
async def test_poisoned_records_are_served_with_exactly_that_text(
    sandbox: Sandbox, client: StClient, data_type: DataType, kind: PoisonKind
) -> None:
    _, token = await client.export_all(data_type)
    clean = {r["id"]: r for r in await export_text(client, data_type)}
    result = await sandbox.mutate(1, PROD, data_type, poison=4, poison_kind=kind)
    assert len(set(result.poisoned)) == 4 and result.modified == ()
    # They come again after a stored token (a new modifiedOn each), and nothing else does.
    changed = {r["id"]: r for r in await export_text(client, data_type, token)}
    assert set(changed) == set(result.poisoned)
    text_field, number_field = FIELDS[data_type]
    for record_id, record in changed.items():
        before = clean[record_id]
        assert parse_datetime(record["modifiedOn"]) > parse_datetime(before["modifiedOn"])
        name = before[text_field]
        if kind is PoisonKind.NUL:
            assert record[text_field] == name[0] + "\x00" + name[1:]
        elif kind is PoisonKind.SURROGATE:
            assert record[text_field] == name[0] + "\ud800" + name[1:]
        elif kind is PoisonKind.BIGINT:
            assert numeric(record, data_type) == 92233720368547758070
        else:
            assert numeric(record, data_type) == math.inf
    # The served JSON text is the poison itself, not what an encoder would make of it.
    body = (await client.export_page(data_type, token)).body  # one page: the 4 records fit
    expected = {
        PoisonKind.NUL: rb'"%s":"[^"\\]\\u0000' % text_field.encode(),
        PoisonKind.SURROGATE: rb'"%s":"[^"\\]\\ud800' % text_field.encode(),
        PoisonKind.BIGINT: rb'"%s":92233720368547758070[,}]' % number_field.encode(),
        PoisonKind.OVERFLOW: rb'"%s":1e999999[,}]' % number_field.encode(),
    }[kind]
    assert len(re.findall(expected, body)) == 4
    if kind in (PoisonKind.SURROGATE, PoisonKind.OVERFLOW):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)
    else:
        orjson.loads(body)  # decodes (a NUL, a big integer read as a float)


async def test_truth_counts_poisoned_records_with_their_new_modified_on(
    sandbox: Sandbox, client: StClient
) -> None:
    before = sandbox.truth(1, PROD, CUSTOMERS)
    result = await sandbox.mutate(1, PROD, CUSTOMERS, poison=5, poison_kind=PoisonKind.SURROGATE)
    records = await export_text(client, CUSTOMERS)
    truth = sandbox.truth(1, PROD, CUSTOMERS)
    assert truth.count == before.count == len(records) == 120
    assert truth.digest != before.digest
    assert truth.digest == truth_digest((r["id"], r["modifiedOn"], r["active"]) for r in records)
    newest = max(
        (r for r in records if r["id"] in result.poisoned),
        key=lambda r: parse_datetime(r["modifiedOn"]),
    )
    assert truth.max_modified_on == newest["modifiedOn"]


async def test_a_later_change_serves_a_poisoned_record_clean_again(
    sandbox: Sandbox, client: StClient
) -> None:
    result = await sandbox.mutate(1, PROD, INVOICES, poison=3, poison_kind=PoisonKind.OVERFLOW)
    dataset = sandbox.state.dataset(1, PROD, INVOICES)
    fixed, *still = result.poisoned
    dataset.touch(fixed)
    by_id = {r["id"]: r for r in await export_text(client, INVOICES)}
    assert math.isfinite(numeric(by_id[fixed], INVOICES))
    assert all(numeric(by_id[i], INVOICES) == math.inf for i in still)
    for record_id in still:
        dataset.touch(record_id)
    records, _ = await client.export_all(INVOICES)  # orjson: every record decodes again
    assert len(records) == 60
    assert sandbox.truth(1, PROD, INVOICES).digest == truth_digest(
        (r["id"], r["modifiedOn"], r["active"]) for r in records
    )


@pytest.mark.parametrize("data_type", [CUSTOMERS, INVOICES])
def test_poison_json_changes_only_its_field(data_type: DataType) -> None:
    dataset = _dataset(200, data_type=data_type)
    for record_id in list(dataset.iter_by_id())[:50]:
        text = dataset.render_json(record_id)
        clean = orjson.loads(text)
        for kind in PoisonKind:
            poisoned = json.loads(poison_json(text, data_type, kind))
            changed = {k for k in clean if clean[k] != poisoned[k]}
            field = (
                FIELDS[data_type][0]
                if kind in (PoisonKind.NUL, PoisonKind.SURROGATE)
                else ("creditLimit" if data_type is CUSTOMERS else "salesTaxCode")
            )
            assert changed == {field}, (kind, changed)


async def test_poison_through_the_admin_api(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    url = sandbox.base_url + "/_sandbox/mutate"
    target = {"tenant_id": 1, "environment": "production", "data_type": "customers"}
    async with session.post(url, json={**target, "poison": 2, "poison_kind": "nul"}) as response:
        assert response.status == 200
        body = await response.json()
    assert len(body["poisoned"]) == 2 and body["modified"] == []
    for bad in ({"poison": 1}, {"poison": 1, "poison_kind": "arsenic"}, {"poison": -1}):
        async with session.post(url, json={**target, **bad}) as response:
            assert response.status == 400
            assert "poison" in (await response.json())["error"]
    # The records listing still answers with surrogates served (as the records were before).
    await sandbox.mutate(1, PROD, CUSTOMERS, poison=2, poison_kind=PoisonKind.SURROGATE)
    query = {**target, "tenant_id": "1", "records": "true"}
    async with session.get(sandbox.base_url + "/_sandbox/truth", params=query) as response:
        assert response.status == 200
        assert len((await response.json())["records"]) == 120
