"""List endpoints: page/pageSize paging, filters, active defaults, totals and bounds."""

from __future__ import annotations

from typing import Any

from stsync_daemon.sandbox import Sandbox
from stsync_daemon.sandbox.clock import parse_datetime

from .conftest import CUSTOMERS, INVOICES, PROD, StClient


async def _list(client: StClient, data_type: Any = CUSTOMERS, **params: str) -> dict[str, Any]:
    reply = await client.get(client.path(data_type, export=False), params)
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json()
    return body


async def _all(client: StClient, data_type: Any = CUSTOMERS, **params: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    page = 1
    while True:
        body = await _list(client, data_type, page=str(page), pageSize="40", **params)
        records.extend(body["data"])
        if not body["hasMore"]:
            return records
        page += 1


async def test_customers_list_is_active_only_by_default(sandbox: Sandbox, client: StClient) -> None:
    truth = sandbox.truth(1, PROD, CUSTOMERS)
    default = await _all(client)
    assert all(r["active"] for r in default)
    assert len(default) == truth.active
    assert len(await _all(client, active="Any")) == truth.count
    inactive = await _all(client, active="False")
    assert len(inactive) == truth.count - truth.active
    assert not any(r["active"] for r in inactive)


async def test_invoices_list_returns_all_by_default_and_filters_by_active_state(
    sandbox: Sandbox, client: StClient
) -> None:
    await sandbox.mutate(1, PROD, INVOICES, deactivate=5)
    truth = sandbox.truth(1, PROD, INVOICES)
    assert len(await _all(client, INVOICES)) == truth.count
    assert len(await _all(client, INVOICES, activeState="ActiveOnly")) == truth.active
    assert (
        len(await _all(client, INVOICES, activeState="InactiveOnly")) == truth.count - truth.active
    )


async def test_envelope_paging_and_total(client: StClient) -> None:
    first = await _list(client, pageSize="10", includeTotal="true", active="Any")
    assert set(first) == {"page", "pageSize", "hasMore", "totalCount", "data"}
    assert (first["page"], first["pageSize"], first["hasMore"], first["totalCount"]) == (
        1,
        10,
        True,
        120,
    )
    assert len(first["data"]) == 10
    without_total = await _list(client, pageSize="10")
    assert without_total["totalCount"] is None
    default = await _list(client)
    assert default["pageSize"] == 50 and len(default["data"]) == 50
    last = await _list(client, page="12", pageSize="10", active="Any")
    assert len(last["data"]) == 10 and last["hasMore"] is False
    beyond = await _list(client, page="13", pageSize="10", active="Any")
    assert beyond["data"] == [] and beyond["hasMore"] is False
    ids = [r["id"] for r in await _all(client, active="Any")]
    assert ids == sorted(ids) and len(set(ids)) == 120


async def test_ids_and_modified_filters(client: StClient) -> None:
    everything = await _all(client, active="Any")
    chosen = [everything[5]["id"], everything[17]["id"], 99_999_999]
    by_ids = await _list(client, ids=",".join(map(str, chosen)), active="Any")
    assert [r["id"] for r in by_ids["data"]] == sorted(chosen[:2])

    stamps = sorted(parse_datetime(r["modifiedOn"]) for r in everything)
    pivot = everything[60]["modifiedOn"]
    pivot_ticks = parse_datetime(pivot)
    after = await _all(client, active="Any", modifiedOnOrAfter=pivot)
    before = await _all(client, active="Any", modifiedBefore=pivot)
    assert len(after) == sum(t >= pivot_ticks for t in stamps)
    assert len(before) + len(after) == 120
    assert all(parse_datetime(r["modifiedOn"]) < pivot_ticks for r in before)


async def test_sort_by_modified_on(client: StClient) -> None:
    asc = await _list(client, sort="ModifiedOn", pageSize="120", active="Any")
    desc = await _list(client, sort="-ModifiedOn", pageSize="120", active="Any")
    stamps = [parse_datetime(r["modifiedOn"]) for r in asc["data"]]
    assert stamps == sorted(stamps)
    assert [r["id"] for r in desc["data"]] == [r["id"] for r in reversed(asc["data"])]
    by_id_desc = await _list(client, sort="-Id", pageSize="5", active="Any")
    assert [r["id"] for r in by_id_desc["data"]] == sorted(r["id"] for r in asc["data"])[-1:-6:-1]


async def test_bad_parameters_are_400_problems(client: StClient) -> None:
    path = client.path(CUSTOMERS, export=False)
    for params, field in (
        ({"pageSize": "0"}, "pageSize"),
        ({"pageSize": "5001"}, "pageSize"),
        ({"page": "0"}, "page"),
        ({"page": "x"}, "page"),
        ({"includeTotal": "maybe"}, "includeTotal"),
        ({"modifiedOnOrAfter": "yesterday"}, "modifiedOnOrAfter"),
        ({"ids": "1,abc"}, "ids"),
        ({"active": "Sometimes"}, "active"),
        ({"sort": "Name"}, "sort"),
    ):
        reply = await client.get(path, params)
        assert reply.status == 400, params
        body = reply.json()
        assert body["status"] == 400 and field in body["errors"], body
        assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert (await client.get(path, {"pageSize": "5000"})).status == 200
