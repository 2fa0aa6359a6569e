"""Everything a running sandbox knows: tenants and their data, credentials, limits, faults, counters.

All of it lives in one event loop and changes only between awaits, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from ..enums import DataType, Environment
from ..errors import ConfigError, NotFoundError
from .auth import Credential, TokenService
from .clock import TICKS_PER_SECOND, now_ticks
from .dataset import BASE_END, Dataset
from .faults import FaultInjector
from .limits import Accounting, RateLimiter
from .models import (
    ExportOrder,
    FaultRule,
    MutationResult,
    PoisonKind,
    SandboxConfig,
    TenantSpec,
    Truth,
)

log = logging.getLogger("stsync.sandbox")

MAX_TRUTH_RECORDS = 20_000


class TenantState:
    """One tenant in one environment: its spec and its two data sets sharing one clock."""

    def __init__(self, spec: TenantSpec, order: ExportOrder = ExportOrder.MODIFIED) -> None:
        self.spec = spec
        self._last_tick = BASE_END
        self.datasets = {
            DataType.CUSTOMERS: Dataset(
                seed=spec.seed,
                tenant_id=spec.tenant_id,
                environment=spec.environment,
                data_type=DataType.CUSTOMERS,
                count=spec.customers,
                clock=self._tick,
            ),
            DataType.INVOICES: Dataset(
                seed=spec.seed,
                tenant_id=spec.tenant_id,
                environment=spec.environment,
                data_type=DataType.INVOICES,
                count=spec.invoices,
                customers=spec.customers,
                clock=self._tick,
            ),
        }
        for dataset in self.datasets.values():
            dataset.set_order(order)

    def _tick(self) -> int:
        # Later than anything before it, so a mutation always lands after every issued position.
        self._last_tick = max(now_ticks(), self._last_tick + 1)
        return self._last_tick


class PageCache:
    """Rendered response bodies, least recently used evicted first, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        """The cached body, refreshed as most recently used."""
        body = self._items.get(key)
        if body is not None:
            self._items.move_to_end(key)
        return body

    def put(self, key: Hashable, body: bytes) -> None:
        """Keep a body if it fits."""
        if len(body) > self.max_bytes:
            return
        self._items[key] = body
        self.size += len(body)
        while self.size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)


class SandboxState:
    """The mutable heart of a sandbox, shared by the HTTP handlers, the admin API and tests."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.app_keys = frozenset(config.app_keys)
        self.tokens = TokenService(config.token_ttl_seconds)
        self.limiter = RateLimiter(config.rate_limit_per_second)
        self.accounting = Accounting()
        self.faults = FaultInjector(config.faults)
        self.cache = PageCache(config.page_cache_bytes)
        self.prefetching: dict[Hashable, asyncio.Future[None]] = {}
        self.background: set[asyncio.Task[None]] = set()
        self.export_page_size = config.export_page_size
        self.visibility_delay_seconds = config.visibility_delay_seconds
        self.mutations_per_second = config.mutations_per_second
        self.export_token_ttl_seconds = config.export_token_ttl_seconds
        self.export_order = config.export_order
        self.tenants: dict[tuple[Environment, int], TenantState] = {}
        for spec in config.tenants:
            self.add_tenant(spec)

    # --- tenants -------------------------------------------------------------------------------

    def add_tenant(self, spec: TenantSpec) -> None:
        """Connect a new tenant and its credential; ids and client ids are unique per environment."""
        if (spec.environment, spec.tenant_id) in self.tenants:
            raise ConfigError(f"tenant {spec.tenant_id} already exists in {spec.environment}")
        if (spec.environment, spec.client_id) in self.tokens.credentials:
            raise ConfigError(f"client id already used in {spec.environment}")
        self.tenants[(spec.environment, spec.tenant_id)] = TenantState(spec, self.export_order)
        self.tokens.add(
            Credential(spec.environment, spec.client_id, spec.client_secret, spec.tenant_id)
        )
        log.debug(
            "sandbox.tenant_added",
            extra={"tenant_id": spec.tenant_id, "environment": str(spec.environment)},
        )

    def tenant(self, tenant_id: int, environment: Environment) -> TenantState:
        """A tenant, or NotFoundError."""
        state = self.tenants.get((Environment(environment), tenant_id))
        if state is None:
            raise NotFoundError(f"no tenant {tenant_id} in {environment}")
        return state

    def dataset(self, tenant_id: int, environment: Environment, data_type: DataType) -> Dataset:
        """One data set of a tenant, or NotFoundError."""
        return self.tenant(tenant_id, environment).datasets[DataType(data_type)]

    # --- data ----------------------------------------------------------------------------------

    def mutate(
        self,
        tenant_id: int,
        environment: Environment,
        data_type: DataType,
        *,
        modify: int = 0,
        deactivate: int = 0,
        create: int = 0,
        corrupt: int = 0,
        poison: int = 0,
        poison_kind: PoisonKind | None = None,
    ) -> MutationResult:
        """Change records now: each change gets a modifiedOn later than any before it."""
        if min(modify, deactivate, create, corrupt, poison) < 0:
            raise ConfigError("mutation counts must not be negative")
        if poison and poison_kind is None:
            raise ConfigError("poison_kind is required with poison")
        dataset = self.dataset(tenant_id, environment, data_type)
        return MutationResult(
            modified=tuple(dataset.modify(modify)),
            deactivated=tuple(dataset.deactivate(deactivate)),
            created=tuple(dataset.create(create)),
            corrupted=tuple(dataset.corrupt(corrupt)),
            poisoned=tuple(dataset.poison(poison, poison_kind)) if poison_kind else (),
        )

    def truth(self, tenant_id: int, environment: Environment, data_type: DataType) -> Truth:
        """Count, active count, digest and latest modifiedOn of a data set as served now."""
        count, active, digest, max_modified = self.dataset(
            tenant_id, environment, data_type
        ).truth()
        return Truth(count=count, active=active, digest=digest, max_modified_on=max_modified)

    def records(
        self, tenant_id: int, environment: Environment, data_type: DataType
    ) -> list[dict[str, Any]]:
        """Every record of a small data set, by id."""
        dataset = self.dataset(tenant_id, environment, data_type)
        if dataset.total > MAX_TRUTH_RECORDS:
            raise ConfigError(
                f"data set has {dataset.total} records; records are listed up to {MAX_TRUTH_RECORDS}"
            )
        return [dataset.render(record_id) for record_id in dataset.iter_by_id()]

    def invalidate_export_tokens(
        self, tenant_id: int, environment: Environment, data_type: DataType | None = None
    ) -> None:
        """Make the continuation tokens issued so far fail with 400."""
        tenant = self.tenant(tenant_id, environment)
        for kind, dataset in tenant.datasets.items():
            if data_type is None or kind is DataType(data_type):
                dataset.invalidate_tokens()

    def export_token_max_age(self) -> int | None:
        """How old (ticks) a continuation token may be, or None when tokens never expire."""
        ttl = self.export_token_ttl_seconds
        return None if ttl is None else int(ttl * TICKS_PER_SECOND)

    def visibility_cutoff(self, include_recent: bool) -> int | None:
        """Newest modifiedOn an export may show, or None when changes are visible at once."""
        if include_recent or not self.visibility_delay_seconds:
            return None
        return now_ticks() - int(self.visibility_delay_seconds * TICKS_PER_SECOND)

    # --- credentials and faults ------------------------------------------------------------------

    def revoke(
        self, client_id: str, environment: Environment | None = None, revoked: bool = True
    ) -> int:
        """Revoke (or restore) a client: its tokens fail from now on. Returns credentials changed."""
        changed = 0
        for (env, cid), credential in self.tokens.credentials.items():
            if cid == client_id and (environment is None or env is Environment(environment)):
                credential.revoked = revoked
                changed += 1
        if not changed:
            raise NotFoundError("no such client id")
        return changed

    def set_faults(self, rules: Sequence[FaultRule]) -> None:
        """Replace the fault rules."""
        self.faults.set_rules(rules)

    # --- background changes ----------------------------------------------------------------------

    async def run_background_mutations(self) -> None:
        """Apply `mutations_per_second` changes to every data set: 70% modify, 10% deactivate, 20% create."""
        owed: dict[tuple[Environment, int, DataType], float] = {}
        while True:
            await asyncio.sleep(0.2)
            rate = self.mutations_per_second
            if rate <= 0:
                continue
            for (env, tenant_id), tenant in list(self.tenants.items()):
                for data_type, dataset in tenant.datasets.items():
                    key = (env, tenant_id, data_type)
                    owed[key] = owed.get(key, 0.0) + rate * 0.2
                    due = int(owed[key])
                    if not due:
                        continue
                    owed[key] -= due
                    for _ in range(due):
                        dataset.mutate_randomly()

    def update_settings(
        self,
        *,
        mutations_per_second: float | None = None,
        visibility_delay_seconds: float | None = None,
        export_page_size: int | None = None,
        rate_limit_per_second: int | None = None,
        token_ttl_seconds: float | None = None,
        export_token_ttl_seconds: float | None = None,
        export_order: ExportOrder | None = None,
    ) -> None:
        """Change run-time knobs; None leaves one as it is.

        `export_token_ttl_seconds=0` makes continuation tokens last forever again. A new
        `export_order` changes the base records' modifiedOn and ends every token issued so far.
        """
        if mutations_per_second is not None:
            self.mutations_per_second = mutations_per_second
        if visibility_delay_seconds is not None:
            self.visibility_delay_seconds = visibility_delay_seconds
        if export_page_size is not None:
            self.export_page_size = export_page_size
        if rate_limit_per_second is not None:
            self.limiter.per_second = rate_limit_per_second
        if token_ttl_seconds is not None:
            self.tokens.ttl_seconds = token_ttl_seconds
        if export_token_ttl_seconds is not None:
            self.export_token_ttl_seconds = export_token_ttl_seconds or None
        if export_order is not None:
            self.export_order = ExportOrder(export_order)
            for tenant in self.tenants.values():
                for dataset in tenant.datasets.values():
                    dataset.set_order(self.export_order)
