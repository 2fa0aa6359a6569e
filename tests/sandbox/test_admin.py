"""The admin API under /_sandbox/ mirrors the in-process methods, for sandboxes in another process."""

from __future__ import annotations

from typing import Any

import aiohttp

from stsync_daemon.sandbox import Counters, Sandbox, truth_digest

from .conftest import CUSTOMERS, PROD, StClient


async def _call(
    session: aiohttp.ClientSession, sb: Sandbox, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with session.request(method, sb.base_url + "/_sandbox/" + path, **kwargs) as response:
        return response.status, await response.json()


async def test_admin_round_trip(sandbox: Sandbox, client: StClient) -> None:
    session = client.session
    assert await _call(session, sandbox, "GET", "health") == (200, {"status": "ok"})
    status, info = await _call(session, sandbox, "GET", "info")
    assert info["environments"]["production"]["api_url"] == sandbox.api_url(PROD)
    assert {t["tenant_id"] for t in info["tenants"]} == {1, 2}

    query = {"tenant_id": "1", "environment": "production", "data_type": "customers"}
    status, truth = await _call(session, sandbox, "GET", "truth", params=query)
    assert status == 200 and truth == sandbox.truth(1, PROD, CUSTOMERS).model_dump()

    _, token = await client.export_all(CUSTOMERS)
    status, result = await _call(
        session,
        sandbox,
        "POST",
        "mutate",
        json={**query, "tenant_id": 1, "modify": 2, "deactivate": 1, "create": 1},
    )
    assert status == 200 and len(result["modified"]) == 2 and len(result["created"]) == 1
    changed, _ = await client.export_all(CUSTOMERS, token)
    assert len(changed) == len(set(result["modified"]) | set(result["deactivated"])) + 1

    status, with_records = await _call(
        session, sandbox, "GET", "truth", params={**query, "records": "true"}
    )
    rows = [(r["id"], r["modifiedOn"], r["active"]) for r in with_records["records"]]
    assert with_records["count"] == 121 == len(rows)
    assert truth_digest(rows) == with_records["digest"]

    status, counters = await _call(session, sandbox, "GET", "counters", params={"tenant_id": "1"})
    parsed = Counters.from_json(counters)
    assert parsed.total(kind="customers_export", status=200) >= 4  # type: ignore[arg-type]
    assert parsed == sandbox.counters(1)
    assert (await _call(session, sandbox, "POST", "counters/reset"))[0] == 200
    assert sandbox.counters().requests == {}


async def test_admin_faults_revoke_invalidate_settings(sandbox: Sandbox, client: StClient) -> None:
    session = client.session
    rules = {"rules": [{"tenant_id": 1, "maintenance_share": 1.0, "seed": 5}]}
    status, body = await _call(session, sandbox, "PUT", "faults", json=rules)
    assert status == 200 and body["rules"][0]["maintenance_share"] == 1.0
    assert (await client.export_page(CUSTOMERS)).status == 409
    await _call(session, sandbox, "PUT", "faults", json={"rules": []})
    page = (await client.export_page(CUSTOMERS)).json()

    target = {"tenant_id": 1, "environment": "production"}
    assert (await _call(session, sandbox, "POST", "invalidate-export-tokens", json=target))[
        0
    ] == 200
    assert (await client.export_page(CUSTOMERS, page["continueFrom"])).status == 400

    status, body = await _call(
        session, sandbox, "POST", "revoke", json={"client_id": client.tenant.client_id}
    )
    assert (status, body) == (200, {"changed": 1})
    assert (await client.export_page(CUSTOMERS)).status == 401
    await _call(
        session,
        sandbox,
        "POST",
        "revoke",
        json={"client_id": client.tenant.client_id, "revoked": False},
    )
    assert (await client.export_page(CUSTOMERS)).status == 200

    status, settings = await _call(
        session, sandbox, "PUT", "settings", json={"export_page_size": 7}
    )
    assert settings["export_page_size"] == 7
    assert len((await client.export_page(CUSTOMERS)).json()["data"]) == 7


async def test_admin_add_tenant_and_errors(sandbox: Sandbox, client: StClient) -> None:
    session = client.session
    new = {
        "tenant_id": 9,
        "environment": "production",
        "client_id": "c9",
        "client_secret": "s9",
        "customers": 5,
        "invoices": 2,
    }
    status, body = await _call(session, sandbox, "POST", "tenants", json=new)
    assert status == 201 and "client_secret" not in body["tenant"]
    assert sandbox.truth(9, PROD, CUSTOMERS).count == 5
    assert (await _call(session, sandbox, "POST", "tenants", json=new))[0] == 409
    status, body = await _call(session, sandbox, "POST", "tenants", json={**new, "customers": -1})
    assert status == 400 and "customers" in body["error"]
    status, body = await _call(
        session,
        sandbox,
        "GET",
        "truth",
        params={"tenant_id": "404", "environment": "production", "data_type": "customers"},
    )
    assert status == 404
    assert (await _call(session, sandbox, "POST", "mutate", data=b"{not json"))[0] == 400
    assert (await _call(session, sandbox, "POST", "revoke", json={"client_id": "nobody"}))[0] == 404
