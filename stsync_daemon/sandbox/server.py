"""`Sandbox`: a local ServiceTitan served from the current event loop, for tests, demos and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

from ..enums import DataType, Environment
from . import admin, api
from .models import (
    Counters,
    FaultRule,
    MutationResult,
    PoisonKind,
    SandboxConfig,
    TenantSpec,
    Truth,
)
from .state import SandboxState


class Sandbox:
    """Start with `async with Sandbox(config) as sb:`; URLs, ground truth and knobs are on `sb`.

    Everything the admin API offers is also a method here, for tests in the same process.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.state = SandboxState(self.config)
        self._runner: web.AppRunner | None = None
        self._background: asyncio.Task[None] | None = None
        self._port: int | None = None

    # --- life cycle ----------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application (also usable with aiohttp's test utilities)."""
        app = web.Application(client_max_size=1024 * 1024)
        app[api.STATE_KEY] = self.state
        app[admin.INFO_KEY] = self.info
        api.add_routes(app)
        admin.add_routes(app)
        return app

    async def start(self) -> None:
        """Listen on the configured host and port (0: an ephemeral port)."""
        if self._runner is not None:
            raise RuntimeError("sandbox already started")
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self._port = int(address[1])
        self._background = asyncio.create_task(self.state.run_background_mutations())

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None
        for task in list(self.state.background):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- URLs ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (known once started)."""
        if self._port is None:
            raise RuntimeError("sandbox not started")
        return self._port

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT`, with a wildcard host replaced by the loopback address."""
        host = self.config.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def auth_url(self, environment: Environment) -> str:
        """Auth base of an environment; the token endpoint is `auth_url(env) + "/connect/token"`."""
        return f"{self.base_url}/{Environment(environment).value}/auth"

    def api_url(self, environment: Environment) -> str:
        """API base of an environment, e.g. `api_url(env) + "/crm/v2/tenant/1/export/customers"`."""
        return f"{self.base_url}/{Environment(environment).value}/api"

    def info(self) -> dict[str, Any]:
        """URLs, app keys, tenants with credentials and settings (what `GET /_sandbox/info` returns)."""
        return {
            "base_url": self.base_url,
            "app_keys": list(self.config.app_keys),
            "environments": {
                env.value: {"auth_url": self.auth_url(env), "api_url": self.api_url(env)}
                for env in Environment
            },
            "tenants": [
                tenant.spec.model_dump(mode="json") for tenant in self.state.tenants.values()
            ],
            "settings": admin.settings_json(self.state),
        }

    # --- the admin API, in process -------------------------------------------------------------

    async def mutate(
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
        """Modify, deactivate, create (or corrupt, or poison) records now, modifiedOn later than
        any before."""
        return self.state.mutate(
            tenant_id,
            environment,
            data_type,
            modify=modify,
            deactivate=deactivate,
            create=create,
            corrupt=corrupt,
            poison=poison,
            poison_kind=poison_kind,
        )

    def truth(self, tenant_id: int, environment: Environment, data_type: DataType) -> Truth:
        """Count and digest of what the export serves now (see `truth.truth_digest`)."""
        return self.state.truth(tenant_id, environment, data_type)

    def records(
        self, tenant_id: int, environment: Environment, data_type: DataType
    ) -> list[dict[str, Any]]:
        """Every record of a small data set (at most 20,000), by id."""
        return self.state.records(tenant_id, environment, data_type)

    def counters(
        self, tenant_id: int | None = None, environment: Environment | None = None
    ) -> Counters:
        """Requests by (tenant, environment, kind, status), per-second peaks and faults."""
        return self.state.accounting.snapshot(tenant_id, environment)

    def reset_counters(self) -> None:
        """Start counting from zero."""
        self.state.accounting.reset()

    def set_faults(self, rules: FaultRule | Sequence[FaultRule] = ()) -> None:
        """Replace the fault rules (none: no faults)."""
        self.state.set_faults((rules,) if isinstance(rules, FaultRule) else tuple(rules))

    def revoke(self, client_id: str, environment: Environment | None = None) -> None:
        """Revoke a client: new tokens are refused and issued ones rejected with 401."""
        self.state.revoke(client_id, environment, revoked=True)

    def restore(self, client_id: str, environment: Environment | None = None) -> None:
        """Undo `revoke`."""
        self.state.revoke(client_id, environment, revoked=False)

    def invalidate_export_tokens(
        self, tenant_id: int, environment: Environment, data_type: DataType | None = None
    ) -> None:
        """Continuation tokens issued so far get 400 from now on."""
        self.state.invalidate_export_tokens(tenant_id, environment, data_type)

    def add_tenant(self, spec: TenantSpec) -> None:
        """Connect another tenant."""
        self.state.add_tenant(spec)

    def update_settings(self, **knobs: Any) -> None:
        """Change run-time knobs (see `SandboxState.update_settings`)."""
        self.state.update_settings(**knobs)
