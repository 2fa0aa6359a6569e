"""The admin API under `/_sandbox/`: what tests and the demo use to drive a sandbox in another process.

JSON in and out; errors are `{"error": "..."}` with 400 (bad input), 404 (unknown tenant/client) or
409 (duplicate tenant). It is unauthenticated: the sandbox is a local tool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..enums import DataType, Environment
from ..errors import ConfigError, NotFoundError
from .api import STATE_KEY
from .models import ExportOrder, FaultRule, PoisonKind, TenantSpec, describe_validation_error
from .state import SandboxState

INFO_KEY: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("sandbox_info")


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MutateRequest(_Request):
    """Body of `POST /_sandbox/mutate`: how many random records to change in each way.

    `poison` records (distinct) are served with `poison_kind`'s text in one field until changed
    again, e.g. `{"poison": 2, "poison_kind": "surrogate"}` (see `PoisonKind`).
    """

    tenant_id: int
    environment: Environment
    data_type: DataType
    modify: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    deactivate: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    create: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    corrupt: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    poison: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    poison_kind: PoisonKind | None = None

    @model_validator(mode="after")
    def _kind_with_poison(self) -> MutateRequest:
        if self.poison and self.poison_kind is None:
            raise ValueError(
                "poison_kind (nul, surrogate, bigint or overflow) is required with poison"
            )
        return self


class InvalidateRequest(_Request):
    """Body of `POST /_sandbox/invalidate-export-tokens`."""

    tenant_id: int
    environment: Environment
    data_type: DataType | None = None


class RevokeRequest(_Request):
    """Body of `POST /_sandbox/revoke`; `revoked: false` restores the client."""

    client_id: str
    environment: Environment | None = None
    revoked: bool = True


class FaultsRequest(_Request):
    """Body of `PUT /_sandbox/faults`: the complete new rule list."""

    rules: tuple[FaultRule, ...] = ()


class SettingsRequest(_Request):
    """Body of `PUT /_sandbox/settings`: only the keys given change.

    `export_token_ttl_seconds`: continuation tokens older than this get the invalid-token 400
    (0: never, the default). `export_order`: `"modified"` or `"unsorted"` (see `ExportOrder`).
    """

    mutations_per_second: Annotated[float, Field(ge=0, le=100_000)] | None = None
    visibility_delay_seconds: Annotated[float, Field(ge=0)] | None = None
    export_page_size: Annotated[int, Field(ge=1, le=5000)] | None = None
    rate_limit_per_second: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    token_ttl_seconds: Annotated[float, Field(gt=0, le=86_400)] | None = None
    export_token_ttl_seconds: Annotated[float, Field(ge=0, le=10 * 365 * 86_400)] | None = None
    export_order: ExportOrder | None = None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    return orjson.loads(raw) if raw.strip() else {}


def _guard(
    handler: Callable[[web.Request, SandboxState], Any],
) -> Callable[[web.Request], Any]:
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request, request.app[STATE_KEY])  # type: ignore[no-any-return]
        except orjson.JSONDecodeError:
            return _error(400, "body is not valid JSON")
        except ValidationError as exc:
            return _error(400, describe_validation_error(exc))
        except NotFoundError as exc:
            return _error(404, str(exc))
        except ConfigError as exc:
            return _error(409 if "already" in str(exc) else 400, str(exc))

    return wrapped


def settings_json(state: SandboxState) -> dict[str, Any]:
    """The knobs that can change at run time."""
    return {
        "mutations_per_second": state.mutations_per_second,
        "visibility_delay_seconds": state.visibility_delay_seconds,
        "export_page_size": state.export_page_size,
        "rate_limit_per_second": state.limiter.per_second,
        "token_ttl_seconds": state.tokens.ttl_seconds,
        "export_token_ttl_seconds": state.export_token_ttl_seconds,
        "export_order": state.export_order,
    }


async def health(request: web.Request, state: SandboxState) -> web.Response:
    """`GET /_sandbox/health` → `{"status": "ok"}`."""
    return _json({"status": "ok"})


async def info(request: web.Request, state: SandboxState) -> web.Response:
    """`GET /_sandbox/info` → URLs, app keys, tenants with their credentials, settings."""
    return _json(request.app[INFO_KEY]())


async def add_tenant(request: web.Request, state: SandboxState) -> web.Response:
    """`POST /_sandbox/tenants` with a `TenantSpec` → 201 and the tenant without its secret."""
    spec = TenantSpec.model_validate(await _body(request))
    state.add_tenant(spec)
    return _json({"tenant": spec.model_dump(mode="json", exclude={"client_secret"})}, 201)


async def mutate(request: web.Request, state: SandboxState) -> web.Response:
    """`POST /_sandbox/mutate` → `{"modified", "deactivated", "created", "corrupted", "poisoned"}`,
    each a list of ids."""
    body = MutateRequest.model_validate(await _body(request))
    result = state.mutate(
        body.tenant_id,
        body.environment,
        body.data_type,
        modify=body.modify,
        deactivate=body.deactivate,
        create=body.create,
        corrupt=body.corrupt,
        poison=body.poison,
        poison_kind=body.poison_kind,
    )
    return _json(result.model_dump(mode="json"))


async def truth(request: web.Request, state: SandboxState) -> web.Response:
    """`GET /_sandbox/truth?tenant_id=&environment=&data_type=[&records=true]`.

    → `{"count", "active", "digest", "max_modified_on"[, "records": [...]]}`.
    """
    query = request.query
    try:
        tenant_id = int(query.get("tenant_id", ""))
        environment = Environment(query.get("environment", ""))
        data_type = DataType(query.get("data_type", ""))
    except ValueError:
        return _error(400, "tenant_id, environment and data_type are required and must be valid")
    result: dict[str, Any] = state.truth(tenant_id, environment, data_type).model_dump(mode="json")
    if query.get("records", "").lower() == "true":
        result["records"] = state.records(tenant_id, environment, data_type)
    return _json(result)


async def counters(request: web.Request, state: SandboxState) -> web.Response:
    """`GET /_sandbox/counters[?tenant_id=&environment=]` → see `Counters.to_json`."""
    query = request.query
    try:
        tenant_id = int(query["tenant_id"]) if query.get("tenant_id") else None
        environment = Environment(query["environment"]) if query.get("environment") else None
    except ValueError:
        return _error(400, "tenant_id must be an integer and environment a known environment")
    return _json(state.accounting.snapshot(tenant_id, environment).to_json())


async def reset_counters(request: web.Request, state: SandboxState) -> web.Response:
    """`POST /_sandbox/counters/reset` → `{}`."""
    state.accounting.reset()
    return _json({})


async def get_faults(request: web.Request, state: SandboxState) -> web.Response:
    """`GET /_sandbox/faults` → `{"rules": [FaultRule...]}`."""
    return _json({"rules": [rule.model_dump(mode="json") for rule in state.faults.rules]})


async def put_faults(request: web.Request, state: SandboxState) -> web.Response:
    """`PUT /_sandbox/faults` with `{"rules": [...]}` → the rules now in force."""
    body = FaultsRequest.model_validate(await _body(request))
    state.set_faults(body.rules)
    return _json({"rules": [rule.model_dump(mode="json") for rule in state.faults.rules]})


async def revoke(request: web.Request, state: SandboxState) -> web.Response:
    """`POST /_sandbox/revoke` with `{"client_id", "environment"?, "revoked"?}` → `{"changed": n}`."""
    body = RevokeRequest.model_validate(await _body(request))
    changed = state.revoke(body.client_id, body.environment, body.revoked)
    return _json({"changed": changed})


async def invalidate(request: web.Request, state: SandboxState) -> web.Response:
    """`POST /_sandbox/invalidate-export-tokens` with `{"tenant_id", "environment", "data_type"?}`."""
    body = InvalidateRequest.model_validate(await _body(request))
    state.invalidate_export_tokens(body.tenant_id, body.environment, body.data_type)
    return _json({})


async def get_settings(request: web.Request, state: SandboxState) -> web.Response:
    """`GET /_sandbox/settings` → the run-time knobs."""
    return _json(settings_json(state))


async def put_settings(request: web.Request, state: SandboxState) -> web.Response:
    """`PUT /_sandbox/settings` with any of the knobs → all knobs now in force."""
    body = SettingsRequest.model_validate(await _body(request))
    state.update_settings(**body.model_dump(exclude_none=True))
    return _json(settings_json(state))


def add_routes(app: web.Application) -> None:
    """Mount the admin API under `/_sandbox/`."""
    routes: list[tuple[str, str, Callable[[web.Request, SandboxState], Any]]] = [
        ("GET", "/_sandbox/health", health),
        ("GET", "/_sandbox/info", info),
        ("POST", "/_sandbox/tenants", add_tenant),
        ("POST", "/_sandbox/mutate", mutate),
        ("GET", "/_sandbox/truth", truth),
        ("GET", "/_sandbox/counters", counters),
        ("POST", "/_sandbox/counters/reset", reset_counters),
        ("GET", "/_sandbox/faults", get_faults),
        ("PUT", "/_sandbox/faults", put_faults),
        ("POST", "/_sandbox/revoke", revoke),
        ("POST", "/_sandbox/invalidate-export-tokens", invalidate),
        ("GET", "/_sandbox/settings", get_settings),
        ("PUT", "/_sandbox/settings", put_settings),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guard(handler))
