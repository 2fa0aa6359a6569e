"""Export behaviours for fault tests, over HTTP: unsorted exports and continuation tokens that expire."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from stsync_daemon.sandbox import Sandbox, truth_digest
from stsync_daemon.sandbox.api import INVALID_TOKEN_TITLE
from stsync_daemon.sandbox.clock import parse_datetime
from stsync_daemon.sandbox.models import ExportOrder

from .conftest import CUSTOMERS, INVOICES, PROD, StClient, make_config, spec


def _rows(records: list[dict[str, Any]]) -> list[tuple[int, str, bool]]:
    return [(r["id"], r["modifiedOn"], r["active"]) for r in records]


def _ticks(records: list[dict[str, Any]]) -> list[int]:
    return [parse_datetime(r["modifiedOn"]) for r in records]


async def _put_settings(client: StClient, **knobs: Any) -> tuple[int, Any]:
    url = client.sandbox.base_url + "/_sandbox/settings"
    async with client.session.put(url, json=knobs) as response:
        return response.status, await response.json()


async def test_unsorted_export_covers_every_record_once_by_id(
    session: aiohttp.ClientSession,
) -> None:
    config = make_config(tenants=(spec(1, customers=300, invoices=130),), export_order="unsorted")
    async with Sandbox(config) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        for data_type, count in ((CUSTOMERS, 300), (INVOICES, 130)):
            records, token = await client.export_all(data_type)
            ids = [r["id"] for r in records]
            assert ids == sorted(ids) and len(set(ids)) == count
            ticks = _ticks(records)
            assert ticks != sorted(ticks)  # not in modifiedOn order
            truth = sb.truth(1, PROD, data_type)
            assert truth.count == count and truth.digest == truth_digest(_rows(records))
            assert (
                truth.max_modified_on
                == max(records, key=lambda r: parse_datetime(r["modifiedOn"]))["modifiedOn"]
            )
            # Changes come after every base record, in the order they happened.
            result = await sb.mutate(1, PROD, data_type, modify=4, deactivate=2, create=3)
            changed, _ = await client.export_all(data_type, token)
            assert {r["id"] for r in changed} == {
                *result.modified,
                *result.deactivated,
                *result.created,
            }
            assert _ticks(changed) == sorted(_ticks(changed))
            everything, _ = await client.export_all(data_type)
            assert len(everything) == count + 3
            assert sb.truth(1, PROD, data_type).digest == truth_digest(_rows(everything))


async def test_unsorted_export_from_a_date_filters_the_whole_order(
    session: aiohttp.ClientSession,
) -> None:
    config = make_config(tenants=(spec(1, customers=400),), export_order="unsorted")
    async with Sandbox(config) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        records, _ = await client.export_all(CUSTOMERS)
        date = sorted(r["modifiedOn"] for r in records)[200][:10]
        since, _ = await client.export_all(CUSTOMERS, date)
        expected = [r["id"] for r in records if r["modifiedOn"][:10] >= date]
        assert [r["id"] for r in since] == expected  # in export (id) order, every page filtered
        assert 100 < len(expected) < 300
        assert (await client.export_all(CUSTOMERS, "2100-01-01"))[0] == []


async def test_unsorted_export_hides_recent_changes_and_resumes_at_them(
    session: aiohttp.ClientSession,
) -> None:
    config = make_config(visibility_delay_seconds=900, export_order="unsorted")
    async with Sandbox(config) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        records, token = await client.export_all(CUSTOMERS)
        assert len(records) == 120
        result = await sb.mutate(1, PROD, CUSTOMERS, modify=2)
        hidden, token_after = await client.export_all(CUSTOMERS, token)
        assert hidden == []
        reply = await client.export_page(CUSTOMERS, token_after, includeRecentChanges="true")
        assert [r["id"] for r in reply.json()["data"]] == list(result.modified)


async def test_switching_the_order_at_run_time(sandbox: Sandbox, client: StClient) -> None:
    first = (await client.export_page(CUSTOMERS)).json()
    status, settings = await _put_settings(client, export_order="unsorted")
    assert status == 200 and settings["export_order"] == "unsorted"
    reply = await client.export_page(CUSTOMERS, first["continueFrom"])
    assert reply.status == 400  # positions of the other order mean nothing now
    records, _ = await client.export_all(CUSTOMERS)
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    assert sandbox.truth(1, PROD, CUSTOMERS).digest == truth_digest(_rows(records))
    # The list sorted by modifiedOn is still sorted by it.
    listed = await client.get(
        client.path(CUSTOMERS, export=False),
        {"sort": "+ModifiedOn", "pageSize": "200", "active": "Any"},
    )
    assert _ticks(listed.json()["data"]) == sorted(_ticks(records))
    assert (await _put_settings(client, export_order="sideways"))[0] == 400
    await _put_settings(client, export_order="modified")
    again, _ = await client.export_all(CUSTOMERS)
    assert _ticks(again) == sorted(_ticks(again))
    assert sandbox.state.export_order is ExportOrder.MODIFIED


async def test_tokens_older_than_the_ttl_are_refused_like_invalidated_ones(
    sandbox: Sandbox, client: StClient
) -> None:
    status, settings = await _put_settings(client, export_token_ttl_seconds=1.0)
    assert status == 200 and settings["export_token_ttl_seconds"] == 1.0
    first = (await client.export_page(CUSTOMERS)).json()
    token = first["continueFrom"]
    assert (await client.export_page(CUSTOMERS, token)).status == 200  # young enough
    await asyncio.sleep(1.1)
    reply = await client.export_page(CUSTOMERS, token)
    assert reply.status == 400
    body = reply.json()
    assert body["title"] == INVALID_TOKEN_TITLE
    assert body["errors"] == {"from": [INVALID_TOKEN_TITLE]}
    # Each answer carries a fresh token for the same position, so a steady reader never stalls.
    restart = (await client.export_page(CUSTOMERS)).json()
    assert restart["data"] == first["data"] and restart["continueFrom"] != token
    records, _ = await client.export_all(CUSTOMERS)
    assert len(records) == 120
    # Dates do not expire; 0 turns expiry off again.
    assert (await client.export_page(CUSTOMERS, "2020-01-01")).status == 200
    status, settings = await _put_settings(client, export_token_ttl_seconds=0)
    assert settings["export_token_ttl_seconds"] is None
    assert (await client.export_page(CUSTOMERS, token)).status == 200
    # invalidate-export-tokens still works beside it.
    sandbox.invalidate_export_tokens(1, PROD, CUSTOMERS)
    assert (await client.export_page(CUSTOMERS, token)).status == 400


async def test_token_ttl_from_the_config_also_applies_in_unsorted_order(
    session: aiohttp.ClientSession,
) -> None:
    config = make_config(export_token_ttl_seconds=1.0, export_order="unsorted")
    async with Sandbox(config) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        assert sb.info()["settings"]["export_token_ttl_seconds"] == 1.0
        token = (await client.export_page(CUSTOMERS)).json()["continueFrom"]
        assert (await client.export_page(CUSTOMERS, token)).status == 200
        await asyncio.sleep(1.1)
        assert (await client.export_page(CUSTOMERS, token)).status == 400
