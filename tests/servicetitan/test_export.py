"""Exports follow continueFrom lazily; counts use the list endpoint with the right parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses

from stsync_daemon.config import ServiceTitanConfig
from stsync_daemon.enums import DataType, Environment, ErrorCategory
from stsync_daemon.errors import ApiError
from stsync_daemon.servicetitan import (
    CredentialAccess,
    ExportPage,
    ServiceTitanClient,
    UnreadableRecord,
)

from .conftest import (
    CUSTOMERS_EXPORT,
    CUSTOMERS_LIST,
    INVOICES_EXPORT,
    INVOICES_LIST,
    Endpoint,
    Recorder,
    TokenServer,
    export_body,
    ok,
    serve,
)


async def test_export_follows_continue_from_one_page_at_a_time(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    api = serve(mocked, CUSTOMERS_EXPORT, Endpoint()).then(
        ok(export_body([1, 2], has_more=True, cont="tok/A+=")),
        ok(export_body([3], has_more=True, cont="B")),
        ok(export_body([], has_more=False, cont="C")),
    )
    pages = client.tenant(access).export(DataType.CUSTOMERS, None)
    first = await anext(pages)
    assert len(api.calls) == 1  # lazy: nothing fetched ahead of the consumer
    assert [r["id"] for r in first.records] == [1, 2]
    assert first.continue_from == "tok/A+=" and first.has_more
    rest = [page async for page in pages]
    assert [len(p.records) for p in rest] == [1, 0]
    assert rest[-1].continue_from == "C" and not rest[-1].has_more
    assert [c.params.get("from") for c in api.calls] == [None, "tok/A+=", "B"]
    assert all(c.params["includeRecentChanges"] == "true" for c in api.calls)


async def test_export_from_a_date_without_recent_changes(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    body = export_body([7], has_more=False, cont="Z")
    api = serve(mocked, INVOICES_EXPORT, Endpoint(ok(body)))
    pages = [
        p
        async for p in client.tenant(access).export(
            DataType.INVOICES, "2020-01-01", include_recent_changes=False
        )
    ]
    assert len(pages) == 1
    assert api.calls[0].params == {"from": "2020-01-01", "includeRecentChanges": "false"}
    assert api.calls[0].url.path == "/accounting/v2/tenant/123/export/invoices"


async def test_fetch_export_page_reports_the_body_size(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    recorder: Recorder,
) -> None:
    raw = orjson.dumps(export_body([1, 2, 3], has_more=True, cont="next")).decode()
    serve(mocked, CUSTOMERS_EXPORT, Endpoint({"status": 200, "body": raw}))
    page = await client.tenant(access).fetch_export_page(DataType.CUSTOMERS, "prev")
    assert page == ExportPage(
        records=orjson.loads(raw)["data"], continue_from="next", has_more=True, nbytes=len(raw)
    )
    assert (Environment.INTEGRATION, "export_customers", 200) in recorder.requests


async def test_count_changed_customers_asks_for_the_total_of_all_statuses(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    api = serve(
        mocked,
        CUSTOMERS_LIST,
        Endpoint(ok({"page": 1, "pageSize": 1, "hasMore": True, "totalCount": 4321, "data": []})),
    )
    since = datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert await client.tenant(access).count_changed(DataType.CUSTOMERS, since) == 4321
    assert api.calls[0].params == {
        "pageSize": "1",
        "includeTotal": "true",
        "modifiedOnOrAfter": "2024-01-02T03:04:05Z",
        "active": "Any",
    }


async def test_count_changed_invoices_without_since(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    api = serve(mocked, INVOICES_LIST, Endpoint(ok({"hasMore": False, "totalCount": 0})))
    assert await client.tenant(access).count_changed(DataType.INVOICES, None) == 0
    # Inactive invoices count too: the spec does not say what the list's activeState defaults to.
    assert api.calls[0].params == {"pageSize": "1", "includeTotal": "true", "activeState": "All"}


async def test_count_changed_rejects_naive_datetimes(
    client: ServiceTitanClient, access: CredentialAccess
) -> None:
    with pytest.raises(ValueError, match="naive"):
        await client.tenant(access).count_changed(DataType.CUSTOMERS, datetime(2024, 1, 1))  # noqa: DTZ001


async def test_a_given_session_is_used_and_left_open(
    config: ServiceTitanConfig,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    serve(mocked, INVOICES_LIST, Endpoint(ok({"hasMore": False, "totalCount": 3})))
    async with aiohttp.ClientSession() as session:
        async with ServiceTitanClient(config, session=session) as st:
            assert await st.tenant(access).count_changed(DataType.INVOICES, None) == 3
        assert not session.closed


async def test_an_owned_session_is_created_lazily_and_closed(
    config: ServiceTitanConfig, access: CredentialAccess
) -> None:
    st = ServiceTitanClient(config)
    st.tenant(access)  # cheap, no session needed yet
    async with st:
        session = st._session
        assert session is not None and not session.closed
        assert session.connector is not None and session.connector.limit == config.connections
        assert session.timeout.total == config.request_timeout_seconds
    assert session.closed
    with pytest.raises(RuntimeError):
        await st.tenant(access).check()


async def test_since_is_sent_in_utc(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    api = serve(mocked, INVOICES_LIST, Endpoint(ok({"hasMore": False, "totalCount": 1})))
    since = datetime(2024, 6, 30, 23, 59, 59, 123456, tzinfo=UTC)
    await client.tenant(access).count_changed(DataType.INVOICES, since)
    assert api.calls[0].params["modifiedOnOrAfter"] == "2024-06-30T23:59:59.123456Z"


async def test_an_export_repeating_its_token_three_times_in_a_row_is_an_api_error(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    api = serve(mocked, CUSTOMERS_EXPORT, Endpoint()).then(
        ok(export_body([1, 2], has_more=True, cont="T1")),
        ok(export_body([], has_more=True, cont="T1")),
        ok(export_body([3], has_more=True, cont="T1")),
        ok(export_body([], has_more=True, cont="T1")),
    )
    seen: list[int] = []
    with pytest.raises(ApiError) as info:
        async for page in client.tenant(access).export(DataType.CUSTOMERS, None):
            seen.extend(r["id"] for r in page.records)
    exc = info.value
    assert exc.category is ErrorCategory.API and exc.transient is False
    message = str(exc)
    assert "the customers export" in message and access.describe() in message
    assert "repeats its continuation token" in message and "T1" not in message
    assert [c.params.get("from") for c in api.calls] == [None, "T1", "T1", "T1"]
    assert seen == [1, 2, 3]  # the answers before the third repeat were still handed over


async def test_a_stored_token_given_back_counts_as_a_repeat_too(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    api = serve(mocked, INVOICES_EXPORT, Endpoint(ok(export_body([], has_more=True, cont="S"))))
    with pytest.raises(ApiError, match="repeats its continuation token"):
        async for _ in client.tenant(access).export(DataType.INVOICES, "S"):
            pass
    assert [c.params.get("from") for c in api.calls] == ["S", "S", "S"]


async def test_repeats_that_are_not_in_a_row_are_followed(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
) -> None:
    api = serve(mocked, CUSTOMERS_EXPORT, Endpoint()).then(
        ok(export_body([1], has_more=True, cont="A")),
        ok(export_body([], has_more=True, cont="A")),
        ok(export_body([], has_more=True, cont="A")),
        ok(export_body([2], has_more=True, cont="B")),
        ok(export_body([], has_more=True, cont="B")),
        ok(export_body([], has_more=True, cont="B")),
        ok(export_body([3], has_more=False, cont="B")),
    )
    pages = [page async for page in client.tenant(access).export(DataType.CUSTOMERS, None)]
    assert [r["id"] for p in pages for r in p.records] == [1, 2, 3]
    assert len(api.calls) == 7


async def test_a_page_with_undecodable_records_keeps_the_others(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = b'{"id":1,"modifiedOn":"2024-01-01T00:00:00Z","active":true}'
    surrogate = b'{"id":2,"modifiedOn":"2024-01-01T00:00:00Z","active":true,"name":"a\\ud800b"}'
    overflow = b'{"id":3,"modifiedOn":"2024-01-01T00:00:00Z","active":true,"creditLimit":1e999999}'
    raw = b'{"hasMore":true,"continueFrom":"next","data":[%s, %s ,%s]}' % (
        surrogate,
        good,
        overflow,
    )
    api = serve(mocked, CUSTOMERS_EXPORT, Endpoint({"status": 200, "body": raw}))
    page = await client.tenant(access).fetch_export_page(DataType.CUSTOMERS, "prev")
    assert page.records == [orjson.loads(good)]
    assert page.continue_from == "next" and page.has_more and page.nbytes == len(raw)
    assert page.unreadable == (
        UnreadableRecord(raw=surrogate, reason="no low surrogate in string", record_id="2"),
        UnreadableRecord(
            raw=overflow, reason="number is infinity when parsed as double", record_id="3"
        ),
    )
    assert len(api.calls) == 1 and recorder.retries == []  # not mistaken for a cut answer
    assert "servicetitan.records_unreadable" in caplog.text


async def test_a_list_answer_that_does_not_decode_is_still_retried(
    client: ServiceTitanClient,
    access: CredentialAccess,
    mocked: aioresponses,
    token_server: TokenServer,
    recorder: Recorder,
) -> None:
    bad = b'{"hasMore":false,"totalCount":1,"data":[{"id":1,"x":1e400}]}'
    api = serve(mocked, INVOICES_LIST, Endpoint(ok({"hasMore": False, "totalCount": 1}))).then(
        {"status": 200, "body": bad}
    )
    assert await client.tenant(access).count_changed(DataType.INVOICES, None) == 1
    assert len(api.calls) == 2 and [r for _, r in recorder.retries] == ["network"]
