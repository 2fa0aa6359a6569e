"""Helpers shared by integration tests: settings aimed at a sandbox, and the database's truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from stsync_daemon.config import Settings
from stsync_daemon.enums import DataType, Environment
from stsync_daemon.sandbox import Sandbox, TenantSpec, truth_digest
from stsync_daemon.store.crypto import generate_key

APP_KEY = "ak1.sandbox"


def write_key(directory: Path) -> Path:
    path = directory / "secrets.key"
    path.write_text(generate_key() + "\n")
    return path


def settings_for(sandbox: Sandbox, dsn: str, key_file: Path, **sections: Any) -> Settings:
    """Settings whose ServiceTitan environments are the sandbox's."""
    data: dict[str, Any] = {
        "database": {"dsn": dsn},
        "secrets": {"key_file": str(key_file)},
        "servicetitan": {
            "app_key": APP_KEY,
            "environments": {
                env.value: {"auth_url": sandbox.auth_url(env), "api_url": sandbox.api_url(env)}
                for env in Environment
            },
        },
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return Settings(**data)


def tenant(tenant_id: int, env: Environment = Environment.PRODUCTION, **sizes: int) -> TenantSpec:
    return TenantSpec(
        tenant_id=tenant_id,
        environment=env,
        client_id=f"cid.{env.value}.{tenant_id}",
        client_secret=f"cs.secret.{tenant_id}",
        **sizes,
    )


async def db_truth(
    conn: asyncpg.Connection | Any, data_type: DataType, env: Environment, tenant_id: int
) -> tuple[int, str]:
    """(count, digest) of what PostgreSQL holds for one tenant, as the sandbox computes it."""
    rows = await conn.fetch(
        f"SELECT id, payload->>'modifiedOn' AS m, active FROM servicetitan.{data_type.value} "
        "WHERE environment = $1 AND tenant_id = $2",
        env.value,
        tenant_id,
    )
    return len(rows), truth_digest((r["id"], r["m"], r["active"]) for r in rows)


class DaemonProcess:
    """A real `stsyncd run` subprocess with its own config file and control socket."""

    def __init__(
        self, directory: Path, settings: dict[str, Any], env: dict[str, str] | None = None
    ):
        import os
        import sys

        self.directory = directory
        self.socket = directory / "run" / "control.sock"
        settings = dict(settings)
        settings.setdefault("control", {})["socket"] = str(self.socket)
        settings.setdefault("metrics", {}).setdefault("listen", "127.0.0.1:0")
        settings.setdefault("logging", {})["format"] = "json"
        self.config = directory / "stsync.toml"
        self.config.write_text(to_toml(settings))
        self.log = directory / "stsyncd.log"
        self.env = {**os.environ, **(env or {})}
        self.env.pop("NOTIFY_SOCKET", None) if "NOTIFY_SOCKET" not in (env or {}) else None
        self.argv = [
            sys.executable,
            "-m",
            "stsync_daemon.cli.stsyncd",
            "run",
            "--config",
            str(self.config),
        ]
        self.proc: Any = None

    async def start(self, timeout: float = 30.0) -> DaemonProcess:
        import asyncio
        import subprocess

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"stsyncd exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
                )
            if self.socket.exists():
                try:
                    status, _ = await self.request("GET", "/v1/health")
                    if status == 200:
                        return self
                except OSError:
                    pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"stsyncd did not come up: {self.log.read_text()[-3000:]}")

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import aiohttp
        import orjson

        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket))) as s,
            s.request(method, f"http://localhost{path}", json=body) as resp,
        ):
            raw = await resp.read()
            if resp.content_type == "application/x-ndjson":
                return resp.status, [orjson.loads(line) for line in raw.splitlines() if line]
            return resp.status, orjson.loads(raw) if raw else None

    async def run(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a process/retry and return the run summary from the event stream."""
        status, events = await self.request("POST", path, body)
        assert status == 200, events
        finished = [e for e in events if e["event"] == "run.finished"]
        assert finished, events
        summary: dict[str, Any] = finished[0]["summary"]
        return summary

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def wait(self, timeout: float = 60.0) -> int:
        import asyncio

        deadline = asyncio.get_running_loop().time() + timeout
        while self.proc.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                self.proc.kill()
                raise AssertionError("stsyncd did not exit in time")
            await asyncio.sleep(0.05)
        rc: int = self.proc.returncode
        return rc

    async def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await self.wait()

    def events(self) -> list[dict[str, Any]]:
        import orjson

        out = []
        for line in self.log.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return out


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A tiny TOML writer for test configs (tables, arrays of tables, scalars)."""
    import json

    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and value and isinstance(value[0], dict)
        ):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in tables:
        name = f"{prefix}{key}"
        if isinstance(value, list):
            for item in value:
                lines.append(f"\n[[{name}]]")
                lines.append(to_toml(item, f"{name}."))
        else:
            lines.append(f"\n[{name}]")
            lines.append(to_toml(value, f"{name}."))
    return "\n".join(lines)


def daemon_settings(sandbox: Sandbox, dsn: str, key_file: Path, **sections: Any) -> dict[str, Any]:
    """A config dict for a daemon subprocess aimed at the sandbox."""
    data: dict[str, Any] = {
        "database": {"dsn": dsn},
        "secrets": {"key_file": str(key_file)},
        "servicetitan": {
            "app_key": APP_KEY,
            "max_retry_seconds": 20,
            "environments": {
                env.value: {"auth_url": sandbox.auth_url(env), "api_url": sandbox.api_url(env)}
                for env in Environment
            },
        },
        "sync": {"commit_batch_records": 250, "shutdown_grace_seconds": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return data


def credential_body(spec: TenantSpec, company_id: str | None = None) -> dict[str, Any]:
    return {
        "company_id": company_id or f"co{spec.tenant_id}",
        "company_name": f"Company {spec.tenant_id}",
        "environment": spec.environment.value,
        "tenant_id": spec.tenant_id,
        "client_id": spec.client_id,
        "client_secret": spec.client_secret,
    }
