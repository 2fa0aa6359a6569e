"""Responses validated against ServiceTitan's official OpenAPI documents with openapi-core.

The only allowed deviations are the documented real-data ones: customer `type`, `address.country` and
`externalData` are sometimes null although required. They are patched to valid values before the
strict validation, and the test proves nothing else needed patching. Error bodies are served as
`application/problem+json` (the documents only list `application/json`); their JSON is validated as is.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.exceptions import OpenAPIError
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import InvalidData

from stsync_daemon.enums import DataType
from stsync_daemon.sandbox import FaultRule, Sandbox
from stsync_daemon.sandbox.api import parse_list_query
from stsync_daemon.sandbox.listing import SortField

from .conftest import CUSTOMERS, INVOICES, StClient, make_config, spec

SPECS = Path("/work/shared/servicetitan-openapi")
if not SPECS.exists():  # the repository's own copy, when the shared folder is absent
    SPECS = Path(__file__).resolve().parents[3] / "shared" / "servicetitan-openapi"
HOST = "https://api.servicetitan.io"


@pytest.fixture(scope="module")
def documents() -> dict[DataType, OpenAPI]:
    if not SPECS.exists():
        pytest.skip("official OpenAPI documents not available")
    # The documents are trusted; skipping their own validation saves seconds.
    config = Config(spec_validator_cls=None)
    return {
        CUSTOMERS: OpenAPI.from_dict(
            json.loads((SPECS / "crm-v2.json").read_text()), config=config
        ),
        INVOICES: OpenAPI.from_dict(
            json.loads((SPECS / "accounting-v2.json").read_text()), config=config
        ),
    }


def _patch_documented_nulls(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    patched = copy.deepcopy(body)
    count = 0
    for record in patched["data"]:
        if "address" not in record:
            continue
        if record["type"] is None:
            record["type"] = "Residential"
            count += 1
        if record["address"]["country"] is None:
            record["address"]["country"] = "USA"
            count += 1
        if record["externalData"] is None:
            record["externalData"] = []
            count += 1
    return patched, count


def _validate(
    document: OpenAPI, path: str, params: dict[str, str], status: int, body: dict[str, Any]
) -> None:
    request = MockRequest(HOST, "get", path, args=params)
    response = MockResponse(orjson.dumps(body), status_code=status, content_type="application/json")
    document.validate_response(request, response)


@pytest.fixture
async def big_sandbox() -> Any:
    config = make_config(tenants=(spec(1, customers=400, invoices=150),), export_page_size=200)
    async with Sandbox(config) as sb:
        yield sb


@pytest.mark.parametrize("data_type", [CUSTOMERS, INVOICES])
@pytest.mark.parametrize("export", [False, True])
async def test_data_responses_conform(
    documents: dict[DataType, OpenAPI],
    big_sandbox: Sandbox,
    session: aiohttp.ClientSession,
    data_type: DataType,
    export: bool,
) -> None:
    client = StClient(big_sandbox, session, big_sandbox.config.tenants[0])
    await big_sandbox.mutate(
        1, client.tenant.environment, data_type, modify=5, deactivate=5, create=5
    )
    path = client.path(data_type, export)
    if export:
        params_list = [{}, {"from": "2019-06-01", "includeRecentChanges": "true"}]
    else:
        active = {"active": "Any"} if data_type is CUSTOMERS else {"activeState": "All"}
        params_list = [{"pageSize": "200", "includeTotal": "true", **active}, {"page": "2"}]
    patched_total = 0
    for params in params_list:
        reply = await client.get(path, params)
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("application/json")
        body = reply.json()
        patched, count = _patch_documented_nulls(body)
        patched_total += count
        _validate(documents[data_type], path, params, 200, patched)
        if count:
            with pytest.raises(InvalidData):
                _validate(documents[data_type], path, params, 200, body)
    if data_type is CUSTOMERS:
        assert patched_total > 0, "the documented nulls should occur in 400 customers"
    else:
        assert patched_total == 0


async def test_error_responses_conform(
    documents: dict[DataType, OpenAPI], sandbox: Sandbox, client: StClient
) -> None:
    errors = []
    list_path = client.path(CUSTOMERS, export=False)
    errors.append((list_path, {"pageSize": "0"}, await client.get(list_path, {"pageSize": "0"})))
    export_path = client.path(CUSTOMERS, export=True)
    errors.append((export_path, {"from": "x"}, await client.export_page(CUSTOMERS, "x")))
    errors.append((export_path, {}, await client.get(export_path, app_key=None)))
    errors.append((export_path, {}, await client.get(export_path, token="expired")))
    errors.append(
        (client.path(CUSTOMERS, True, 2), {}, await client.get(client.path(CUSTOMERS, True, 2)))
    )
    for rule in (
        FaultRule(rate_limit_share=1.0),
        FaultRule(server_error_share=1.0),
        FaultRule(maintenance_share=1.0),
    ):
        sandbox.set_faults(rule)
        errors.append((export_path, {}, await client.export_page(CUSTOMERS)))
    sandbox.set_faults()
    statuses = sorted(reply.status for _, _, reply in errors)
    assert statuses == [400, 400, 401, 401, 403, 409, 429, 500]
    for path, params, reply in errors:
        assert reply.headers["Content-Type"].startswith("application/problem+json")
        # Only 400 is documented; every error status uses the same ApiErrorResponse schema.
        _validate(documents[CUSTOMERS], path, params, 400, reply.json())


def _list_operation(data_type: DataType) -> dict[str, Any]:
    name, path = (
        ("crm-v2.json", "/tenant/{tenant}/customers")
        if data_type is CUSTOMERS
        else ("accounting-v2.json", "/tenant/{tenant}/invoices")
    )
    document = json.loads((SPECS / name).read_text())
    operation: dict[str, Any] = document["paths"][path]["get"]
    operation["components"] = document["components"]
    return operation


class _Recording(dict[str, str]):
    """Query parameters that note every name looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)


@pytest.mark.parametrize("data_type", [CUSTOMERS, INVOICES])
def test_list_parameters_are_the_specs(
    documents: dict[DataType, OpenAPI], data_type: DataType
) -> None:
    operation = _list_operation(data_type)
    declared = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    query = _Recording({})
    parse_list_query(data_type, query)
    assert query.read <= set(declared), query.read - set(declared)
    expected = {"page", "pageSize", "includeTotal", "ids", "sort"}
    expected |= {"modifiedOnOrAfter", "modifiedBefore", "createdOnOrAfter", "createdBefore"}
    expected |= {"active"} if data_type is CUSTOMERS else {"activeState"}
    assert query.read == expected
    # Every documented value of the active filter is understood.
    name = "active" if data_type is CUSTOMERS else "activeState"
    enum_ref = declared[name]["schema"]["oneOf"][0]["$ref"].rsplit("/", 1)[1]
    values = operation["components"]["schemas"][enum_ref]["enum"]
    assert len(values) == 3
    assert len({parse_list_query(data_type, {name: v}).active for v in values}) == 3
    if data_type is CUSTOMERS:
        fields = declared["sort"]["description"].split("Available fields are:")[1]
        assert {f.strip(" .") for f in fields.split(",")} == {f.value for f in SortField}


LIST_QUERIES: list[dict[str, str]] = [
    {"page": "2", "pageSize": "30", "includeTotal": "true", "sort": "-Id"},
    {"sort": "+ModifiedOn", "modifiedOnOrAfter": "2019-01-01T00:00:00Z", "includeTotal": "false"},
    {"sort": "-CreatedOn", "createdOnOrAfter": "2018-06-01T00:00:00Z"},
    {"modifiedBefore": "2022-01-01T00:00:00.1234567Z", "createdBefore": "2021-01-01T00:00:00Z"},
    {"ids": "10000003,10000001,50000002,50000001", "sort": "+CreatedOn"},
]


@pytest.mark.filterwarnings("ignore:Unsupported scheme type")  # openapi-core and oauth2 security
@pytest.mark.parametrize("data_type", [CUSTOMERS, INVOICES])
async def test_list_requests_and_responses_conform(
    documents: dict[DataType, OpenAPI],
    big_sandbox: Sandbox,
    session: aiohttp.ClientSession,
    data_type: DataType,
) -> None:
    client = StClient(big_sandbox, session, big_sandbox.config.tenants[0])
    path = client.path(data_type, export=False)
    headers = {"ST-App-Key": "ak", "Authorization": "token"}
    actives = (
        [{"active": v} for v in ("True", "False", "Any")]
        if data_type is CUSTOMERS
        else [{"activeState": v} for v in ("ActiveOnly", "InactiveOnly", "All")]
    )
    for params in [*LIST_QUERIES, *actives]:
        documents[data_type].validate_request(
            MockRequest(HOST, "get", path, args=params, headers=headers)
        )
        reply = await client.get(path, params)
        assert reply.status == 200, (params, reply.body)
        body = reply.json()
        assert body["data"], params
        assert (body["totalCount"] is not None) is (params.get("includeTotal") == "true")
        _validate(documents[data_type], path, params, 200, _patch_documented_nulls(body)[0])
    # What the spec refuses, the sandbox refuses with a 400 naming the parameter.
    name = "active" if data_type is CUSTOMERS else "activeState"
    for params in ({"page": "x"}, {"modifiedOnOrAfter": "yesterday"}, {name: "Sometimes"}):
        with pytest.raises(OpenAPIError):
            documents[data_type].validate_request(
                MockRequest(HOST, "get", path, args=params, headers=headers)
            )
        reply = await client.get(path, params)
        assert reply.status == 400 and list(reply.json()["errors"]) == list(params), reply.body
