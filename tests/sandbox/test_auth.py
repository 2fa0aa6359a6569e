"""Auth as ServiceTitan does it: client credentials, app key, per-tenant and per-environment tokens."""

from __future__ import annotations

import asyncio
import base64
import logging

import aiohttp
import pytest

from stsync_daemon.sandbox import Sandbox

from .conftest import CUSTOMERS, INTEG, PROD, StClient, make_config


async def test_token_response_has_the_oauth_shape(client: StClient) -> None:
    reply = await client.fetch_token()
    assert reply.status == 200
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["access_token"].count(".") == 2  # JWT-shaped
    assert "customers" in body["scope"]


async def test_wrong_secret_and_unknown_client_are_invalid_client(client: StClient) -> None:
    for client_id, secret in ((None, "nope"), ("no-such-client", "x")):
        reply = await client.fetch_token(client_id, secret)
        assert reply.status == 400
        assert reply.json() == {"error": "invalid_client"}


async def test_wrong_grant_type_is_an_oauth_error(client: StClient) -> None:
    url = client.sandbox.auth_url(PROD) + "/connect/token"
    form = {"grant_type": "password", "client_id": "a", "client_secret": "b"}
    async with client.session.post(url, data=form) as response:
        assert response.status == 400
        assert (await response.json()) == {"error": "unsupported_grant_type"}


async def test_basic_auth_for_client_credentials_is_accepted(client: StClient) -> None:
    url = client.sandbox.auth_url(PROD) + "/connect/token"
    raw = f"{client.tenant.client_id}:{client.tenant.client_secret}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    async with client.session.post(
        url, data={"grant_type": "client_credentials"}, headers=headers
    ) as response:
        assert response.status == 200


async def test_token_works_with_and_without_bearer(client: StClient) -> None:
    path = client.path(CUSTOMERS, export=True)
    assert (await client.get(path)).status == 200
    assert (await client.get(path, bearer=True)).status == 200


async def test_missing_or_unknown_app_key_is_401(client: StClient) -> None:
    path = client.path(CUSTOMERS, export=True)
    for app_key in (None, "unknown-app"):
        reply = await client.get(path, app_key=app_key)
        assert reply.status == 401
        assert "ST-App-Key" in reply.json()["errors"]


async def test_missing_or_garbage_token_is_401(client: StClient) -> None:
    path = client.path(CUSTOMERS, export=True)
    assert (await client.get(path, token="")).status == 401
    assert (await client.get(path, token="a.b.c")).status == 401
    forged = (await client.token())[:-4] + "AAAA"
    assert (await client.get(path, token=forged)).status == 401


async def test_token_of_another_tenant_is_403(client: StClient) -> None:
    reply = await client.get(client.path(CUSTOMERS, export=True, tenant_id=2))
    assert reply.status == 403
    assert reply.json()["title"] == "Provided authentication is insufficient to grant access"
    reply = await client.get(client.path(CUSTOMERS, export=True, tenant_id=999))
    assert reply.status == 403


async def test_credentials_of_one_environment_fail_on_the_other(client: StClient) -> None:
    # Same tenant id exists in integration, but a production token is not valid there.
    reply = await client.get(client.path(CUSTOMERS, export=True), environment=INTEG)
    assert reply.status == 401
    # And production credentials cannot get an integration token.
    url = client.sandbox.auth_url(INTEG) + "/connect/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": client.tenant.client_id,
        "client_secret": client.tenant.client_secret,
    }
    async with client.session.post(url, data=form) as response:
        assert response.status == 400


async def test_tokens_expire(session: aiohttp.ClientSession) -> None:
    async with Sandbox(make_config(token_ttl_seconds=1)) as sb:
        client = StClient(sb, session, sb.config.tenants[0])
        reply = await client.fetch_token()
        assert reply.json()["expires_in"] == 1
        path = client.path(CUSTOMERS, export=True)
        assert (await client.get(path)).status == 200
        await asyncio.sleep(1.1)
        expired = await client.get(path)
        assert expired.status == 401
        assert "invalid_token" in expired.headers["WWW-Authenticate"]
        fresh = (await client.fetch_token()).json()["access_token"]
        assert (await client.get(path, token=fresh)).status == 200


async def test_revoked_credential_is_rejected_until_restored(
    sandbox: Sandbox, client: StClient
) -> None:
    path = client.path(CUSTOMERS, export=True)
    assert (await client.get(path)).status == 200
    sandbox.revoke(client.tenant.client_id)
    assert (await client.get(path)).status == 401
    assert (await client.fetch_token()).json() == {"error": "invalid_client"}
    sandbox.restore(client.tenant.client_id)
    assert (await client.get(path)).status == 200


async def test_no_secret_or_token_in_logs(
    client: StClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        token = await client.token()
        await client.get(client.path(CUSTOMERS, export=True))
        client.sandbox.add_tenant(
            client.tenant.model_copy(
                update={"tenant_id": 77, "client_id": "c77", "client_secret": "s3cr3t-77"}
            )
        )
    text = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert token not in text
    assert "s3cr3t-77" not in text
    assert client.tenant.client_secret not in text
