"""The sandbox's vocabulary: tenants, faults, configuration and the answers of its admin API.

Frozen pydantic models, so that a tenants file, the CLI and admin calls are validated the same way.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..enums import DataType, Environment
from ..errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EndpointKind(StrEnum):
    """What a request asked for: the label of the request counters."""

    TOKEN = "token"
    CUSTOMERS_LIST = "customers_list"
    CUSTOMERS_EXPORT = "customers_export"
    INVOICES_LIST = "invoices_list"
    INVOICES_EXPORT = "invoices_export"


class FaultKind(StrEnum):
    """Injected failures, as counted by the sandbox."""

    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    MAINTENANCE = "maintenance"
    DROP = "drop"
    MALFORMED = "malformed"
    LATENCY = "latency"
    REPEAT_TOKEN = "repeat_token"


class ExportOrder(StrEnum):
    """How the export orders records: ServiceTitan "usually" sorts by modification date."""

    MODIFIED = "modified"  # by (modifiedOn, id): base records, then changes as they happen
    UNSORTED = "unsorted"  # base records by id with modifiedOn not increasing, then changes


class PoisonKind(StrEnum):
    """Text a JSON decoder may refuse or mangle, served in one field of a poisoned record."""

    NUL = "nul"  # a `\u0000` escape in the customer's name (invoice: summary)
    SURROGATE = "surrogate"  # a lone `\ud800` escape there: orjson refuses it
    BIGINT = "bigint"  # an integer beyond int64 in a numeric field: orjson reads a float
    OVERFLOW = "overflow"  # `1e999999` in a numeric field: beyond double range, orjson refuses it


class TenantSpec(_Frozen):
    """One tenant connected to the app in one environment, with its credential and data sizes."""

    tenant_id: Annotated[int, Field(ge=1, le=2**53)]
    environment: Environment
    client_id: Annotated[str, Field(min_length=1, max_length=200)]
    client_secret: Annotated[str, Field(min_length=1, max_length=500, repr=False)]
    customers: Annotated[int, Field(ge=0, le=1_000_000_000)] = 100
    invoices: Annotated[int, Field(ge=0, le=1_000_000_000)] = 300
    seed: int = 0


class FaultRule(_Frozen):
    """Failures injected into API calls (never into the token endpoint or the admin API).

    Shares are probabilities per request, drawn from `random.Random(seed)`, so a run can be replayed.
    A rule applies to every API request unless `tenant_id`/`environment`/`data_type`/`endpoint`
    narrow it (`endpoint`: one of the request counters' kinds, e.g. `customers_list`, so that the list
    and export endpoints can fail separately; never `token`).
    `repeat_token_share` only affects exports: `hasMore: true`, no data and the very `from` it was
    given as `continueFrom` (a token for the start when none was given), as a stuck API would.
    """

    tenant_id: int | None = None
    environment: Environment | None = None
    data_type: DataType | None = None
    endpoint: EndpointKind | None = None
    rate_limit_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    server_error_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    maintenance_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    drop_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    malformed_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    repeat_token_share: Annotated[float, Field(ge=0, le=1)] = 0.0
    latency_ms: Annotated[float, Field(ge=0, le=600_000)] = 0.0
    latency_jitter_ms: Annotated[float, Field(ge=0, le=600_000)] = 0.0
    seed: int = 0

    @model_validator(mode="after")
    def _api_only(self) -> FaultRule:
        if self.endpoint is EndpointKind.TOKEN:
            raise ValueError("faults are never injected into the token endpoint")
        return self


class SandboxConfig(_Frozen):
    """Everything a sandbox is started with; the admin API can change tenants and faults later."""

    tenants: tuple[TenantSpec, ...] = ()
    app_keys: tuple[Annotated[str, Field(min_length=1)], ...] = ("ak1.sandbox",)
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    token_ttl_seconds: Annotated[float, Field(gt=0, le=86_400)] = 900
    rate_limit_per_second: Annotated[int, Field(ge=1, le=1_000_000)] = 60
    export_page_size: Annotated[int, Field(ge=1, le=5000)] = 500
    seed: int = 0
    faults: tuple[FaultRule, ...] = ()
    visibility_delay_seconds: Annotated[float, Field(ge=0)] = 0.0
    mutations_per_second: Annotated[float, Field(ge=0, le=100_000)] = 0.0
    page_cache_bytes: Annotated[int, Field(ge=0)] = 64 * 1024 * 1024
    # Continuation tokens older than this are refused like invalidated ones; None: never.
    export_token_ttl_seconds: Annotated[float, Field(gt=0, le=10 * 365 * 86_400)] | None = None
    export_order: ExportOrder = ExportOrder.MODIFIED

    @model_validator(mode="after")
    def _unique(self) -> SandboxConfig:
        seen_tenants: set[tuple[Environment, int]] = set()
        seen_clients: set[tuple[Environment, str]] = set()
        for spec in self.tenants:
            if (spec.environment, spec.tenant_id) in seen_tenants:
                raise ValueError(f"tenant {spec.tenant_id} declared twice in {spec.environment}")
            if (spec.environment, spec.client_id) in seen_clients:
                raise ValueError(f"client id declared twice in {spec.environment}")
            seen_tenants.add((spec.environment, spec.tenant_id))
            seen_clients.add((spec.environment, spec.client_id))
        return self


class MutationResult(_Frozen):
    """Ids touched by one mutation call, in the order they were changed."""

    modified: tuple[int, ...] = ()
    deactivated: tuple[int, ...] = ()
    created: tuple[int, ...] = ()
    corrupted: tuple[int, ...] = ()
    poisoned: tuple[int, ...] = ()


class Truth(_Frozen):
    """The current ground truth of one data set (see `truth.truth_digest` for the digest)."""

    count: int
    active: int
    digest: str
    max_modified_on: str | None


@dataclass(frozen=True)
class Counters:
    """Requests served, by (tenant, environment, endpoint kind, status), plus peaks and faults."""

    requests: dict[tuple[int, Environment, EndpointKind, int], int] = field(default_factory=dict)
    max_requests_per_second: dict[tuple[int, Environment], int] = field(default_factory=dict)
    faults: dict[tuple[int, Environment, FaultKind], int] = field(default_factory=dict)

    def total(
        self,
        *,
        tenant_id: int | None = None,
        environment: Environment | None = None,
        kind: EndpointKind | None = None,
        status: int | None = None,
    ) -> int:
        """Requests matching every given label."""
        return sum(
            n
            for (t, e, k, s), n in self.requests.items()
            if (tenant_id is None or t == tenant_id)
            and (environment is None or e == environment)
            and (kind is None or k == kind)
            and (status is None or s == status)
        )

    def peak(self, tenant_id: int, environment: Environment) -> int:
        """Most API requests of one tenant seen within any 1-second window."""
        return self.max_requests_per_second.get((tenant_id, environment), 0)

    def to_json(self) -> dict[str, Any]:
        """The admin API's shape."""
        return {
            "requests": [
                {"tenant_id": t, "environment": e, "kind": k, "status": s, "count": n}
                for (t, e, k, s), n in sorted(self.requests.items())
            ],
            "max_requests_per_second": [
                {"tenant_id": t, "environment": e, "max": n}
                for (t, e), n in sorted(self.max_requests_per_second.items())
            ],
            "faults": [
                {"tenant_id": t, "environment": e, "fault": f, "count": n}
                for (t, e, f), n in sorted(self.faults.items())
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counters:
        """Parse what `to_json` produced (used by clients of a separate sandbox process)."""
        return cls(
            requests={
                (
                    r["tenant_id"],
                    Environment(r["environment"]),
                    EndpointKind(r["kind"]),
                    r["status"],
                ): r["count"]
                for r in data.get("requests", [])
            },
            max_requests_per_second={
                (r["tenant_id"], Environment(r["environment"])): r["max"]
                for r in data.get("max_requests_per_second", [])
            },
            faults={
                (r["tenant_id"], Environment(r["environment"]), FaultKind(r["fault"])): r["count"]
                for r in data.get("faults", [])
            },
        )


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first bad key."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return f"{key}: {message}"


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON sandbox file (any `SandboxConfig` keys; usually `app_keys` and `tenants`)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"tenants file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"tenants file {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw) if path.suffix.lower() == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"tenants file {path} is not valid {path.suffix[1:] or 'TOML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"tenants file {path}: top level must be a table/object")
    return data
