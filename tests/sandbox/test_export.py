"""The export feed: paging by continuation token, dates, mutations after a token, invalid tokens."""

from __future__ import annotations

import aiohttp

from stsync_daemon.sandbox import Sandbox, truth_digest
from stsync_daemon.sandbox.clock import parse_datetime

from .conftest import CUSTOMERS, INVOICES, PROD, StClient, make_config, spec


def _rows(records: list[dict[str, object]]) -> list[tuple[int, str, bool]]:
    return [(int(r["id"]), str(r["modifiedOn"]), bool(r["active"])) for r in records]  # type: ignore[call-overload]


async def test_full_export_pages_and_matches_the_truth(sandbox: Sandbox, client: StClient) -> None:
    pages = []
    from_ = None
    while True:
        page = (await client.export_page(CUSTOMERS, from_)).json()
        assert set(page) == {"hasMore", "continueFrom", "data"}
        pages.append(len(page["data"]))
        from_ = page["continueFrom"]
        if not page["hasMore"]:
            break
    assert pages == [50, 50, 20]
    records, _ = await client.export_all(CUSTOMERS)
    ids = [r["id"] for r in records]
    assert len(set(ids)) == 120
    order = [(parse_datetime(r["modifiedOn"]), r["id"]) for r in records]
    assert order == sorted(order)
    assert any(not r["active"] for r in records), "exports include inactive records"
    truth = sandbox.truth(1, PROD, CUSTOMERS)
    assert truth.count == 120
    assert truth.digest == truth_digest(_rows(records))
    assert truth.active == sum(r["active"] for r in records)


async def test_invoices_reference_existing_customers_and_use_string_money(client: StClient) -> None:
    invoices, _ = await client.export_all(INVOICES)
    customers, _ = await client.export_all(CUSTOMERS)
    customer_ids = {c["id"] for c in customers}
    assert len(invoices) == 60
    for invoice in invoices:
        assert invoice["customer"]["id"] in customer_ids
        for field in ("subTotal", "salesTax", "total", "balance", "discountTotal"):
            assert isinstance(invoice[field], str)
            assert invoice[field].replace("-", "").replace(".", "").isdigit()


async def test_end_of_feed_returns_no_data_and_a_reusable_token(client: StClient) -> None:
    _, token = await client.export_all(CUSTOMERS)
    page = (await client.export_page(CUSTOMERS, token)).json()
    assert page["data"] == [] and page["hasMore"] is False
    assert page["continueFrom"] == token


async def test_changes_after_a_token_appear_when_resuming_from_it(
    sandbox: Sandbox, client: StClient
) -> None:
    _, token = await client.export_all(CUSTOMERS)
    result = await sandbox.mutate(1, PROD, CUSTOMERS, modify=3, deactivate=2, create=4)
    changed, new_token = await client.export_all(CUSTOMERS, token)
    by_id = {r["id"]: r for r in changed}
    assert set(by_id) == set(result.modified) | set(result.deactivated) | set(result.created)
    for record_id in result.deactivated:
        assert by_id[record_id]["active"] is False
    # Resuming from the old token again still shows them (tokens are reusable)...
    again, _ = await client.export_all(CUSTOMERS, token)
    assert {r["id"] for r in again} == set(by_id)
    # ...and the new token shows nothing more.
    assert (await client.export_all(CUSTOMERS, new_token))[0] == []
    # The full export equals the truth after the mutation.
    records, _ = await client.export_all(CUSTOMERS)
    assert len(records) == 124
    assert sandbox.truth(1, PROD, CUSTOMERS).digest == truth_digest(_rows(records))


async def test_a_record_changed_mid_export_is_not_lost(sandbox: Sandbox, client: StClient) -> None:
    first = (await client.export_page(CUSTOMERS)).json()
    seen_first = first["data"][0]["id"]
    result = await sandbox.mutate(1, PROD, CUSTOMERS, modify=0, create=0)
    assert result.modified == ()
    # Modify a record that was already delivered on page one: it must come again later.
    dataset = sandbox.state.dataset(1, PROD, CUSTOMERS)
    dataset.touch(seen_first)
    rest, _ = await client.export_all(CUSTOMERS, first["continueFrom"])
    assert seen_first in {r["id"] for r in rest}
    assert len({r["id"] for r in rest} | {r["id"] for r in first["data"]}) == 120


async def test_from_a_date_returns_records_modified_on_or_after_it(client: StClient) -> None:
    records, _ = await client.export_all(CUSTOMERS)
    middle = sorted(r["modifiedOn"] for r in records)[60]
    date = middle[:10]
    since, _ = await client.export_all(CUSTOMERS, date)
    expected = {r["id"] for r in records if r["modifiedOn"][:10] >= date}
    assert {r["id"] for r in since} == expected
    iso, _ = await client.export_all(CUSTOMERS, f"{date}T00:00:00Z")
    assert {r["id"] for r in iso} == expected
    assert (await client.export_all(CUSTOMERS, "2100-01-01"))[0] == []


async def test_invalid_or_invalidated_token_is_400(sandbox: Sandbox, client: StClient) -> None:
    bad = await client.export_page(CUSTOMERS, "not-a-token")
    assert bad.status == 400
    assert "continuation token" in bad.json()["title"]
    first = (await client.export_page(CUSTOMERS)).json()
    token = first["continueFrom"]
    assert (await client.export_page(CUSTOMERS, token)).status == 200
    # A customers token does not work for invoices.
    assert (await client.export_page(INVOICES, token)).status == 400
    sandbox.invalidate_export_tokens(1, PROD, CUSTOMERS)
    reply = await client.export_page(CUSTOMERS, token)
    assert reply.status == 400
    assert "invalid or has expired" in reply.json()["title"]
    # Restarting from a date or from the beginning still works.
    assert (await client.export_page(CUSTOMERS)).status == 200
    assert (await client.export_page(CUSTOMERS, "2020-01-01")).status == 200


async def test_visibility_delay_hides_recent_changes_unless_asked(
    session: aiohttp.ClientSession,
) -> None:
    async with Sandbox(make_config(visibility_delay_seconds=900)) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        _, token = await client.export_all(CUSTOMERS)
        await sb.mutate(1, PROD, CUSTOMERS, modify=2)
        hidden, token_after = await client.export_all(CUSTOMERS, token)
        assert hidden == []
        reply = await client.export_page(CUSTOMERS, token_after, includeRecentChanges="true")
        assert len(reply.json()["data"]) == 2
        assert (await client.export_page(CUSTOMERS, token, includeRecentChanges="x")).status == 400


async def test_same_seed_same_data_other_seed_other_data(session: aiohttp.ClientSession) -> None:
    digests = []
    for seed in (7, 7, 8):
        config = make_config(tenants=(spec(1, seed=seed),))
        async with Sandbox(config) as sb:
            client = StClient(sb, session, sb.config.tenants[0])
            records, _ = await client.export_all(CUSTOMERS)
            invoices, _ = await client.export_all(INVOICES)
            digests.append((truth_digest(_rows(records)), records, invoices))
            assert sb.truth(1, PROD, CUSTOMERS).digest == digests[-1][0]
    assert digests[0] == digests[1]
    assert digests[0][0] != digests[2][0]
    assert digests[0][1] != digests[2][1]


async def test_real_data_quirks_are_present_in_a_large_set(session: aiohttp.ClientSession) -> None:
    config = make_config(tenants=(spec(1, customers=3000, invoices=0),), export_page_size=1000)
    async with Sandbox(config) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        records, _ = await client.export_all(CUSTOMERS)
    assert len(records) == 3000
    null_type = sum(r["type"] is None for r in records)
    null_country = sum(r["address"]["country"] is None for r in records)
    null_external = sum(r["externalData"] is None for r in records)
    for count in (null_type, null_country, null_external):
        assert 10 <= count <= 90, count  # about 1.5% each
    fractions = {len(r["modifiedOn"].rstrip("Z").partition(".")[2]) for r in records}
    assert 7 in fractions and len(fractions) > 2
    sizes = sorted(len(str(r)) for r in records)
    assert 800 <= sizes[len(sizes) // 2] <= 1600
