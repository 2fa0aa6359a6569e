"""`stsync-sandbox`: run a local ServiceTitan until SIGINT/SIGTERM.

Alone it serves two demo tenants per environment on 127.0.0.1:8480 and prints their credentials;
a TOML/JSON file (`--tenants`) declares others. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn

import orjson
from pydantic import ValidationError

from ..enums import Environment
from ..errors import ConfigError
from .models import (
    EndpointKind,
    FaultRule,
    SandboxConfig,
    TenantSpec,
    describe_validation_error,
    load_config_file,
)
from .server import Sandbox

DEFAULT_PORT = 8480
DEMO_TENANTS = {Environment.PRODUCTION: (1001, 1002), Environment.INTEGRATION: (2001, 2002)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Every option, documented for `--help`."""
    parser = _Parser(
        prog="stsync-sandbox",
        description=(
            "A local ServiceTitan API (OAuth client credentials, CRM customers and Accounting "
            "invoices, list and export endpoints, rate limits, fault injection) plus an admin API "
            "under /_sandbox/. Without --tenants it serves two demo tenants per environment."
        ),
        epilog=(
            "URLs: token http://HOST:PORT/{production|integration}/auth/connect/token, API base "
            "http://HOST:PORT/{production|integration}/api. Admin: /_sandbox/info, /_sandbox/truth, "
            "/_sandbox/mutate, /_sandbox/counters, /_sandbox/faults, /_sandbox/revoke, "
            "/_sandbox/invalidate-export-tokens, /_sandbox/settings, /_sandbox/tenants."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port; 0 picks a free one (default: %(default)s)",
    )
    add(
        "--tenants",
        type=Path,
        metavar="FILE",
        help="TOML or JSON file with `app_keys` and `[[tenants]]` (tenant_id, environment, client_id, "
        "client_secret, customers, invoices, seed); any other sandbox setting may be given there too",
    )
    add("--app-key", action="append", metavar="KEY", help="accepted ST-App-Key (repeatable)")
    add(
        "--customers",
        type=int,
        default=1000,
        help="customers per demo tenant (default: %(default)s)",
    )
    add(
        "--invoices", type=int, default=3000, help="invoices per demo tenant (default: %(default)s)"
    )
    add("--seed", type=int, help="seed of the demo data and default fault seed (default: 0)")
    add("--token-ttl", type=float, metavar="SECONDS", help="access token lifetime (default: 900)")
    add(
        "--rate-limit",
        type=int,
        metavar="N",
        help="requests/s per app key and tenant (default: 60)",
    )
    add("--page-size", type=int, metavar="N", help="export page size (default: 500)")
    add(
        "--visibility-delay",
        type=float,
        metavar="SECONDS",
        help="hide changes from exports for this long unless includeRecentChanges=true (default: 0)",
    )
    add(
        "--mutations-per-second",
        type=float,
        metavar="RATE",
        help="steady background changes per data set (default: 0)",
    )
    add(
        "--export-token-ttl",
        type=float,
        metavar="SECONDS",
        help="refuse continuation tokens older than this, like invalidated ones (default: never)",
    )
    add(
        "--export-order",
        choices=["modified", "unsorted"],
        help="export base records by modifiedOn, or by id with modifiedOn not increasing "
        "(default: modified)",
    )
    faults = parser.add_argument_group("faults (shares are probabilities per API request, 0..1)")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    faults.add_argument("--latency-jitter-ms", type=float, default=0.0, help="extra random latency")
    faults.add_argument(
        "--fault-429", type=float, default=0.0, metavar="SHARE", help="429 responses"
    )
    faults.add_argument(
        "--fault-500", type=float, default=0.0, metavar="SHARE", help="500 responses"
    )
    faults.add_argument(
        "--fault-409",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="409 'suspended for maintenance'",
    )
    faults.add_argument(
        "--fault-drop", type=float, default=0.0, metavar="SHARE", help="connection dropped mid-body"
    )
    faults.add_argument(
        "--fault-malformed", type=float, default=0.0, metavar="SHARE", help="malformed JSON bodies"
    )
    faults.add_argument(
        "--fault-repeat-token",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="exports answering hasMore with the token they were given, and no data",
    )
    faults.add_argument(
        "--fault-endpoint",
        choices=[kind.value for kind in EndpointKind if kind is not EndpointKind.TOKEN],
        help="apply these faults to one kind of endpoint only (default: every API endpoint)",
    )
    faults.add_argument("--fault-seed", type=int, help="seed of the fault draws (default: --seed)")
    add("--json", action="store_true", help="print the sandbox info as one JSON line when ready")
    add("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def demo_tenants(seed: int, customers: int, invoices: int) -> tuple[TenantSpec, ...]:
    """Two tenants per environment with credentials derived from the seed (stable across runs)."""
    specs = []
    for environment, tenant_ids in DEMO_TENANTS.items():
        short = "prod" if environment is Environment.PRODUCTION else "int"
        for tenant_id in tenant_ids:
            secret = hashlib.sha256(f"{seed}:{environment}:{tenant_id}".encode()).hexdigest()[:24]
            specs.append(
                TenantSpec(
                    tenant_id=tenant_id,
                    environment=environment,
                    client_id=f"cid.{short}.{tenant_id}",
                    client_secret=f"cs.{short}.{secret}",
                    customers=customers,
                    invoices=invoices,
                    seed=seed,
                )
            )
    return tuple(specs)


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """Merge the file, then the options, into a validated config (ConfigError on bad input)."""
    data: dict[str, Any] = load_config_file(args.tenants) if args.tenants else {}
    data["host"] = args.host
    data["port"] = args.port
    for option, key in (
        ("seed", "seed"),
        ("token_ttl", "token_ttl_seconds"),
        ("rate_limit", "rate_limit_per_second"),
        ("page_size", "export_page_size"),
        ("visibility_delay", "visibility_delay_seconds"),
        ("mutations_per_second", "mutations_per_second"),
        ("export_token_ttl", "export_token_ttl_seconds"),
        ("export_order", "export_order"),
    ):
        if getattr(args, option) is not None:
            data[key] = getattr(args, option)
    if args.app_key:
        data["app_keys"] = args.app_key
    seed = int(data.get("seed", 0)) if str(data.get("seed", 0)).lstrip("-").isdigit() else 0
    try:
        if "tenants" not in data:
            data["tenants"] = demo_tenants(seed, args.customers, args.invoices)
        rule = FaultRule(
            rate_limit_share=args.fault_429,
            server_error_share=args.fault_500,
            maintenance_share=args.fault_409,
            drop_share=args.fault_drop,
            malformed_share=args.fault_malformed,
            repeat_token_share=args.fault_repeat_token,
            latency_ms=args.latency_ms,
            latency_jitter_ms=args.latency_jitter_ms,
            endpoint=args.fault_endpoint,
            seed=args.fault_seed if args.fault_seed is not None else seed,
        )
        if rule != FaultRule(seed=rule.seed, endpoint=rule.endpoint):
            data["faults"] = (*data.get("faults", ()), rule)
        return SandboxConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid sandbox settings: {describe_validation_error(exc)}") from None


def banner(sandbox: Sandbox) -> str:
    """What an operator needs to point a client at the sandbox (credentials included: it is local)."""
    lines = [f"stsync-sandbox listening on {sandbox.base_url}"]
    lines.append(f"  app key(s): {', '.join(sandbox.config.app_keys)}")
    for environment in Environment:
        lines.append(
            f"  {environment.value}: auth {sandbox.auth_url(environment)}/connect/token  "
            f"api {sandbox.api_url(environment)}"
        )
    for tenant in sandbox.state.tenants.values():
        spec = tenant.spec
        lines.append(
            f"  tenant {spec.tenant_id} ({spec.environment.value}): client_id={spec.client_id} "
            f"client_secret={spec.client_secret} customers={spec.customers} invoices={spec.invoices}"
        )
    lines.append("  admin: GET /_sandbox/info; Ctrl-C stops")
    return "\n".join(lines)


async def serve(config: SandboxConfig, *, as_json: bool) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Sandbox(config) as sandbox:
        print(orjson.dumps(sandbox.info()).decode() if as_json else banner(sandbox), flush=True)
        await stop.wait()
    logging.getLogger("stsync.sandbox").info("sandbox.stopped")


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(coroutine)
        return
    uvloop.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"stsync-sandbox: error: {exc}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            _run(serve(config, as_json=args.json))
    except OSError as exc:
        print(
            f"stsync-sandbox: error: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
