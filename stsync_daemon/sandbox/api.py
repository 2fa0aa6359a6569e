"""The ServiceTitan side of the sandbox: `/connect/token` and the CRM and Accounting endpoints.

Each environment is mounted under its own prefix (`/production/auth`, `/production/api`, …) so one
port serves both while their bases stay separate, as the daemon's per-environment URLs expect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import os
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import NamedTuple

import orjson
from aiohttp import web

from ..enums import DataType, Environment
from .auth import SCOPE
from .clock import now_ticks, parse_datetime
from .dataset import Dataset, InvalidToken, Key
from .listing import ListQuery, SortField, select
from .models import EndpointKind, ExportOrder, FaultKind
from .state import SandboxState

STATE_KEY: web.AppKey[SandboxState] = web.AppKey("sandbox_state", SandboxState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PROBLEM_TYPES = {
    400: "https://tools.ietf.org/html/rfc7231#section-6.5.1",
    401: "https://tools.ietf.org/html/rfc7235#section-3.1",
    403: "https://tools.ietf.org/html/rfc7231#section-6.5.3",
    404: "https://tools.ietf.org/html/rfc7231#section-6.5.4",
    409: "https://tools.ietf.org/html/rfc7231#section-6.5.8",
    429: "https://tools.ietf.org/html/rfc6585#section-4",
    500: "https://tools.ietf.org/html/rfc7231#section-6.6.1",
}
MAINTENANCE_TITLE = "The service is suspended for maintenance. Please try again later."
# The largest pageSize the list endpoints accept (the API documents "up to 5000").
MAX_PAGE_SIZE = 5000
INVALID_TOKEN_TITLE = "The continuation token is invalid or has expired."
FORBIDDEN_TITLE = "Provided authentication is insufficient to grant access"


def problem(
    status: int,
    title: str,
    errors: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An RFC 7807 body shaped like ServiceTitan's `ApiErrorResponse`."""
    body = {
        "type": _PROBLEM_TYPES.get(status, "about:blank"),
        "title": title,
        "status": status,
        "traceId": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00",
        "errors": errors or {},
        "data": {},
    }
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/problem+json",
        headers=headers,
    )


class BadRequest(Exception):
    """A query parameter failed validation."""

    def __init__(
        self, field: str, message: str, title: str = "One or more validation errors occurred."
    ) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.title = title

    def response(self) -> web.Response:
        """The 400 problem."""
        return problem(400, self.title, {self.field: [self.message]})


def _int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(name, f"The value '{raw}' is not valid.") from None
    if not low <= value <= high:
        raise BadRequest(name, f"The field {name} must be between {low} and {high}.")
    return value


def _bool(query: Mapping[str, str], name: str) -> bool | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise BadRequest(name, f"The value '{raw}' is not valid.")
    return lowered == "true"


def _date(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_datetime(raw)
    except ValueError:
        raise BadRequest(name, f"The value '{raw}' is not valid.") from None


def _ids(query: Mapping[str, str]) -> list[int] | None:
    raw = query.get("ids")
    if raw is None or raw.strip() == "":
        return None
    try:
        ids = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise BadRequest("ids", f"The value '{raw}' is not valid.") from None
    if len(ids) > 50:
        raise BadRequest("ids", "The field ids must have at most 50 items.")
    return ids


_SORT_FIELDS = {field.value.lower(): field for field in SortField}


def parse_list_query(data_type: DataType, query: Mapping[str, str]) -> ListQuery:
    """The list endpoint's parameters, as the spec names them; BadRequest names the first bad one.

    Customers take `active` (`True` by default, `False`, `Any`); invoices take `activeState`
    (`All` by default, `ActiveOnly`, `InactiveOnly`). Parameters the sandbox does not model are
    ignored, as the API ignores unknown ones.
    """
    want_active: bool | None
    if data_type is DataType.CUSTOMERS:
        active_raw = (query.get("active") or "True").lower()
        if active_raw not in ("true", "false", "any"):
            raise BadRequest("active", f"The value '{query.get('active')}' is not valid.")
        want_active = None if active_raw == "any" else active_raw == "true"
    else:
        state_raw = (query.get("activeState") or "All").lower()
        if state_raw not in ("activeonly", "inactiveonly", "all"):
            raise BadRequest("activeState", f"The value '{query.get('activeState')}' is not valid.")
        want_active = None if state_raw == "all" else state_raw == "activeonly"
    # `sort=+Id` arrives as " Id" when the client does not escape the plus.
    sort = (query.get("sort") or "+Id").strip()
    field = _SORT_FIELDS.get(sort.lstrip("+- ").lower())
    if field is None:
        raise BadRequest(
            "sort",
            f"Sorting by '{sort}' is not supported. Available fields: Id, ModifiedOn, CreatedOn.",
        )
    ids = _ids(query)
    return ListQuery(
        page=_int(query, "page", 1, 1, 2**31 - 1),
        page_size=_int(query, "pageSize", 50, 1, MAX_PAGE_SIZE),
        include_total=bool(_bool(query, "includeTotal")),
        ids=None if ids is None else tuple(ids),
        active=want_active,
        modified_from=_date(query, "modifiedOnOrAfter"),
        modified_before=_date(query, "modifiedBefore"),
        created_from=_date(query, "createdOnOrAfter"),
        created_before=_date(query, "createdBefore"),
        sort=field,
        descending=sort.startswith("-"),
    )


def render_list(dataset: Dataset, query: Mapping[str, str]) -> bytes:
    """A page of the list endpoint (see `listing` for its cost and its consistency while data changes)."""
    parsed = parse_list_query(dataset.data_type, query)
    page = select(dataset, parsed)
    head = (
        f'{{"page":{parsed.page},"pageSize":{parsed.page_size},'
        f'"hasMore":{"true" if page.has_more else "false"},'
        f'"totalCount":{page.total if parsed.include_total else "null"},"data":['
    )
    parts = dataset.render_page(page.ids)
    if not parts:
        return f"{head}]}}".encode()
    parts[0] = head + parts[0]
    parts[-1] += "]}"
    return ",".join(parts).encode()


async def render_export(
    state: SandboxState, dataset: Dataset, query: Mapping[str, str]
) -> tuple[bytes, Key | None]:
    """A page of the export feed from the `from` position, and the next position worth rendering
    ahead (None when there is no more, or when tokens expire: their bodies are not cached)."""
    include_recent = bool(_bool(query, "includeRecentChanges"))
    max_age = state.export_token_max_age()
    try:
        key = dataset.decode_from(query.get("from"), max_age=max_age)
    except InvalidToken:
        raise BadRequest("from", INVALID_TOKEN_TITLE, title=INVALID_TOKEN_TITLE) from None
    page = _select(state, dataset, key, include_recent)
    if max_age is not None:
        # Each token carries the time it is served; a cached body would carry an older one.
        return _body(dataset, page, dataset.render_page(page.ids), issued=now_ticks()), None
    pending = state.prefetching.get(page.cache_key)
    if pending is not None:
        await asyncio.shield(pending)
        page = _select(state, dataset, key, include_recent)
    body = state.cache.get(page.cache_key)
    if body is None:
        body = _body(dataset, page, dataset.render_page(page.ids))
        state.cache.put(page.cache_key, body)
    return body, (page.last if page.has_more else None)


def render_repeated_token(state: SandboxState, dataset: Dataset, query: Mapping[str, str]) -> bytes:
    """A stuck export: more to come, no data, and the `from` it was given to continue from."""
    given = query.get("from")
    max_age = state.export_token_max_age()
    try:
        key = dataset.decode_from(given, max_age=max_age)
    except InvalidToken:
        raise BadRequest("from", INVALID_TOKEN_TITLE, title=INVALID_TOKEN_TITLE) from None
    token = given or dataset.encode_token(key, issued=0 if max_age is None else now_ticks())
    return orjson.dumps({"hasMore": True, "continueFrom": token, "data": []})


class _Page(NamedTuple):
    ids: list[int]
    has_more: bool
    last: Key
    generation: int
    cache_key: Hashable


def _select(state: SandboxState, dataset: Dataset, key: Key, include_recent: bool) -> _Page:
    cutoff = state.visibility_cutoff(include_recent)
    page_size = state.export_page_size
    if dataset.order is ExportOrder.MODIFIED:
        ids, has_more = dataset.page_after(key, page_size, cutoff)
        last = dataset.key_of(ids[-1]) if ids else key
    else:
        ids, has_more, last = dataset.page_unsorted(key, page_size, cutoff)
    cache_key = (
        dataset.environment,
        dataset.tenant_id,
        dataset.data_type,
        dataset.generation,
        key,
        page_size,
        len(ids),
        has_more,
    )
    return _Page(ids, has_more, last, dataset.generation, cache_key)


def _body(dataset: Dataset, page: _Page, parts: list[str], issued: int = 0) -> bytes:
    """The page envelope around rendered records; `parts` is consumed (a page body is copied once)."""
    head = (
        f'{{"hasMore":{"true" if page.has_more else "false"},'
        f'"continueFrom":"{dataset.encode_token(page.last, issued)}","data":['
    )
    if not parts:
        return f"{head}]}}".encode()
    parts[0] = head + parts[0]
    parts[-1] += "]}"
    return ",".join(parts).encode()


async def prefetch(state: SandboxState, dataset: Dataset, key: Key, include_recent: bool) -> None:
    """Render the page a client will most likely ask for next while it decodes this one.

    Client and sandbox then work in parallel instead of taking turns. Rendering yields every few
    records so that responses still being written (and other requests) are not held up.
    """
    page = _select(state, dataset, key, include_recent)
    if page.cache_key in state.prefetching or state.cache.get(page.cache_key) is not None:
        return
    done = asyncio.get_running_loop().create_future()
    state.prefetching[page.cache_key] = done
    try:
        parts: list[str] = []
        for start in range(0, len(page.ids), 50):
            parts += dataset.render_page(page.ids[start : start + 50])
            await asyncio.sleep(0)
            if dataset.generation != page.generation:
                return  # changed meanwhile: this page will never be asked for
        state.cache.put(page.cache_key, _body(dataset, page, parts))
    finally:
        del state.prefetching[page.cache_key]
        done.set_result(None)


async def _drop_mid_body(request: web.Request, body: bytes) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: max(1, len(body) // 2)])
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response


def api_handler(data_type: DataType, export: bool) -> Handler:
    """One CRM/Accounting endpoint: app key, rate limit, token, tenant, faults, then the data."""
    if data_type is DataType.CUSTOMERS:
        kind = EndpointKind.CUSTOMERS_EXPORT if export else EndpointKind.CUSTOMERS_LIST
    else:
        kind = EndpointKind.INVOICES_EXPORT if export else EndpointKind.INVOICES_LIST

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        environment = Environment(request.match_info["env"])
        try:
            tenant_id = int(request.match_info["tenant"])
        except ValueError:
            state.accounting.count(0, environment, kind, 404)
            return problem(404, "Not Found")
        now = asyncio.get_running_loop().time()
        state.accounting.arrive(tenant_id, environment, now)
        response = await _serve(request, state, environment, tenant_id, now)
        state.accounting.count(tenant_id, environment, kind, response.status)
        return response

    async def _serve(
        request: web.Request,
        state: SandboxState,
        environment: Environment,
        tenant_id: int,
        now: float,
    ) -> web.StreamResponse:
        headers = request.headers
        app_key = headers.get("ST-App-Key")
        if not app_key or app_key not in state.app_keys:
            return problem(
                401,
                "Unauthorized",
                {
                    "ST-App-Key": [
                        "The ST-App-Key header is missing or is not a known application key."
                    ]
                },
            )
        retry_after = state.limiter.acquire((app_key, environment, tenant_id), now)
        if retry_after is not None:
            return problem(
                429,
                f"Too many requests. Please retry after {retry_after} seconds.",
                headers={"Retry-After": str(retry_after)},
            )
        authorization = headers.get("Authorization", "").strip()
        if authorization[:7].lower() == "bearer ":
            authorization = authorization[7:].strip()
        claims = state.tokens.verify(environment, authorization) if authorization else None
        if claims is None:
            return problem(
                401,
                "Unauthorized",
                {"Authorization": ["The access token is missing, invalid or expired."]},
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        tenant = state.tenants.get((environment, tenant_id))
        if claims.tenant_id != tenant_id or tenant is None:
            return problem(403, FORBIDDEN_TITLE)
        decision = state.faults.decide(tenant_id, environment, data_type, kind)
        if decision.delay:
            state.accounting.fault(tenant_id, environment, FaultKind.LATENCY)
            await asyncio.sleep(decision.delay)
        fault = decision.fault
        if fault is FaultKind.REPEAT_TOKEN and not export:
            fault = None  # lists have no continuation token to repeat
        if fault is not None:
            state.accounting.fault(tenant_id, environment, fault)
            if fault is FaultKind.RATE_LIMIT:
                return problem(
                    429,
                    "Too many requests. Please retry after 1 seconds.",
                    headers={"Retry-After": "1"},
                )
            if fault is FaultKind.SERVER_ERROR:
                return problem(500, "An unexpected error occurred.")
            if fault is FaultKind.MAINTENANCE:
                return problem(409, MAINTENANCE_TITLE)
        dataset = tenant.datasets[data_type]
        next_key: Key | None = None
        try:
            if fault is FaultKind.REPEAT_TOKEN:
                return web.Response(
                    body=render_repeated_token(state, dataset, request.query),
                    content_type="application/json",
                )
            if export:
                body, next_key = await render_export(state, dataset, request.query)
            else:
                body = render_list(dataset, request.query)
        except BadRequest as exc:
            return exc.response()
        if fault is FaultKind.MALFORMED:
            body = body[: max(1, len(body) - 2)] + b",]"
        elif fault is FaultKind.DROP:
            return await _drop_mid_body(request, body)
        response = web.Response(body=body, content_type="application/json")
        if next_key is not None and state.cache.max_bytes:
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionResetError:
                return response  # the client went away (a sync cancelled mid-request)
            include_recent = request.query.get("includeRecentChanges", "").lower() == "true"
            task = asyncio.create_task(prefetch(state, dataset, next_key, include_recent))
            state.background.add(task)
            task.add_done_callback(state.background.discard)
        return response

    return handle


def _oauth_error(
    code: str, tenant_id: int, environment: Environment, state: SandboxState
) -> web.Response:
    state.accounting.count(tenant_id, environment, EndpointKind.TOKEN, 400)
    return web.Response(
        status=400,
        body=orjson.dumps({"error": code}),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def token_handler(request: web.Request) -> web.Response:
    """`POST /connect/token` with `grant_type=client_credentials` (form body or HTTP Basic)."""
    state = request.app[STATE_KEY]
    environment = Environment(request.match_info["env"])
    form = await request.post()
    client_id = str(form.get("client_id", ""))
    client_secret = str(form.get("client_secret", ""))
    basic = request.headers.get("Authorization", "")
    if basic[:6].lower() == "basic " and not client_id:
        try:
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return _oauth_error("invalid_client", 0, environment, state)
    credential = state.tokens.credentials.get((environment, client_id))
    tenant_id = credential.tenant_id if credential is not None else 0
    grant_type = form.get("grant_type")
    if not grant_type:
        return _oauth_error("invalid_request", tenant_id, environment, state)
    if grant_type != "client_credentials":
        return _oauth_error("unsupported_grant_type", tenant_id, environment, state)
    issued = state.tokens.issue(environment, client_id, client_secret)
    if issued is None:
        return _oauth_error("invalid_client", tenant_id, environment, state)
    state.accounting.count(tenant_id, environment, EndpointKind.TOKEN, 200)
    return web.Response(
        body=orjson.dumps(
            {
                "access_token": state.tokens.token_for(issued),
                "expires_in": max(1, math.ceil(state.tokens.ttl_seconds)),
                "token_type": "Bearer",
                "scope": SCOPE,
            }
        ),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def add_routes(app: web.Application) -> None:
    """Mount auth and API routes for both environments."""
    env = "{env:integration|production}"
    app.router.add_post(f"/{env}/auth/connect/token", token_handler)
    for data_type, module in ((DataType.CUSTOMERS, "crm"), (DataType.INVOICES, "accounting")):
        base = f"/{env}/api/{module}/v2/tenant/{{tenant}}"
        app.router.add_get(f"{base}/{data_type.value}", api_handler(data_type, export=False))
        app.router.add_get(f"{base}/export/{data_type.value}", api_handler(data_type, export=True))
