"""`stsyncd`: run the daemon, apply migrations, check a config file, generate or rotate a secrets key."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Settings, default_config_path, load_settings
from ..errors import StsyncError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stsyncd",
        description="The stsync daemon: keeps ServiceTitan data synchronized into PostgreSQL.",
        epilog=(
            "The config file defaults to $STSYNC_CONFIG, else /etc/stsync/stsync.toml; every key "
            "can be overridden from the environment (STSYNC_SECTION__KEY, e.g. "
            "STSYNC_DATABASE__DSN). Exit codes: 0 ok, 1 failed, 2 usage or configuration error."
        ),
    )
    parser.add_argument("--version", action="version", version=f"stsyncd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    run.add_argument(
        "--config",
        type=Path,
        help="config file (default: $STSYNC_CONFIG or /etc/stsync/stsync.toml)",
    )
    mig = sub.add_parser("migrate", help="apply database migrations and exit")
    mig.add_argument("--config", type=Path, help="config file")
    mig.add_argument(
        "--status", action="store_true", help="show applied and pending migrations; change nothing"
    )
    check = sub.add_parser(
        "check-config", help="validate a config file and print the effective configuration"
    )
    check.add_argument("path", type=Path, nargs="?", help="config file (default: as for run)")
    key = sub.add_parser("generate-key", help="write a new secrets key file (mode 0600)")
    key.add_argument("path", type=Path, help="where to write the key, e.g. /etc/stsync/secrets.key")
    key.add_argument("--force", action="store_true", help="overwrite an existing file")
    rotate = sub.add_parser(
        "rotate-key",
        help="re-encrypt every stored secret with a new key file (then point [secrets] key_file at it)",
    )
    rotate.add_argument("new_key_file", type=Path, help="the new key (from `stsyncd generate-key`)")
    rotate.add_argument("--config", type=Path, help="config file")
    rotate.add_argument(
        "--old-key-file",
        type=Path,
        help="the key the secrets are stored with now (default: [secrets] key_file)",
    )
    return parser


def _settings(path: Path | None) -> Settings:
    return load_settings(
        path or default_config_path(), required=path is not None or "STSYNC_CONFIG" in os.environ
    )


def _masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration with every secret replaced (pydantic masks SecretStr)."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    dsn = settings.database.dsn.get_secret_value()
    from ..logs import scrub_text

    data["database"]["dsn"] = scrub_text(dsn)
    return data


def _toml_lines(data: dict[str, Any], prefix: str = "") -> list[str]:
    import json

    scalars = [
        (k, v)
        for k, v in data.items()
        if not isinstance(v, dict | list)
        or (isinstance(v, list) and not any(isinstance(i, dict) for i in v))
    ]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    arrays = [
        (k, v)
        for k, v in data.items()
        if isinstance(v, list) and any(isinstance(i, dict) for i in v)
    ]
    lines = []
    for key, value in scalars:
        if value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in tables:
        name = f"{prefix}{key}"
        lines += ["", f"[{name}]", *_toml_lines(value, f"{name}.")]
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{prefix}{key}]]", *_toml_lines(item, f"{prefix}{key}.")]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate-key":
            return _generate_key(args.path, args.force)
        if args.command == "check-config":
            settings = _settings(args.path)
            print("\n".join(_toml_lines(_masked(settings))).strip())
            print(f"# configuration OK ({len(settings.schedules)} schedules)", file=sys.stderr)
            return EXIT_OK
        settings = _settings(args.config)
        from ..logs import configure_logging

        configure_logging(settings.logging)
        if args.command == "migrate":
            return _run_async(_migrate_status(settings) if args.status else _migrate(settings))
        if args.command == "rotate-key":
            return _run_async(_rotate_key(settings, args.new_key_file, args.old_key_file))
        from ..daemon.lifecycle import run as run_daemon

        # aiorun: uvloop, SIGTERM/SIGINT, the drain; SIGHUP reads the file again.
        run_daemon(settings, reload=lambda: _settings(args.config))
        return EXIT_OK
    except StsyncError as exc:
        from ..logs import journal_prefix

        print(f"{journal_prefix(logging.ERROR)}stsyncd: {exc}", file=sys.stderr)
        return EXIT_USAGE if type(exc).__name__ == "ConfigError" else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def _run_async(coro: Any) -> int:
    import uvloop

    result: int = uvloop.run(coro)
    return result


async def _migrate(settings: Settings) -> int:
    from ..daemon.systemd import SystemdNotifier
    from ..store.db import create_pool
    from ..store.migrate import current_version, migrate_keeping_alive

    notifier = SystemdNotifier.from_environment()
    pool = await create_pool(settings.database.dsn.get_secret_value(), min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            applied = await migrate_keeping_alive(conn, lambda: notifier.extend_timeout(30))
            version = await current_version(conn)
    finally:
        await pool.close()
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing to apply"
    print(f"database at version {version} ({names})")
    return EXIT_OK


async def _migrate_status(settings: Settings) -> int:
    from ..store.db import create_pool
    from ..store.migrate import status

    pool = await create_pool(settings.database.dsn.get_secret_value(), min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            states = await status(conn)
    finally:
        await pool.close()
    rows = [
        (
            f"{m.version:04d}",
            m.name,
            m.state,
            m.applied_at.isoformat(timespec="seconds") if m.applied_at else "-",
        )
        for m in states
    ]
    header = ("VERSION", "NAME", "STATE", "APPLIED_AT")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    pending = sum(m.state == "pending" for m in states)
    unknown = sum(m.state == "unknown" for m in states)
    summary = f"{len(states) - pending - unknown} applied, {pending} pending"
    if unknown:
        summary += f", {unknown} unknown to this stsyncd (a newer version migrated the database)"
    print(summary)
    return EXIT_OK


async def _rotate_key(settings: Settings, new_path: Path, old_path: Path | None) -> int:
    from ..store.crypto import SecretCipher
    from ..store.db import create_pool
    from ..store.rotation import live_instances, rotate_secrets

    old_path = old_path or settings.secrets.key_file
    if old_path is None:
        print(
            "stsyncd: name the key the secrets are stored with: --old-key-file PATH "
            "(or set [secrets] key_file)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    new, old = SecretCipher.from_file(new_path), SecretCipher.from_file(old_path)
    pool = await create_pool(settings.database.dsn.get_secret_value(), min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            done = await rotate_secrets(conn, old, new)
            running = await live_instances(conn, settings.cluster.lease_seconds)
    finally:
        await pool.close()
    print(
        f"re-encrypted {done.reencrypted} secrets of {done.credentials} credentials with {new_path} "
        f"({done.already_new} already were); now point [secrets] key_file at it and restart"
    )
    if running:
        print(
            "stsyncd: warning: still running with the old key, restart them with the new one: "
            + ", ".join(running),
            file=sys.stderr,
        )
    return EXIT_OK


def _generate_key(path: Path, force: bool) -> int:
    from ..store.crypto import generate_key

    if path.exists() and not force:
        print(
            f"stsyncd: {path} exists; pass --force to overwrite it (stored secrets would become unreadable)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(generate_key() + "\n")
    print(f"wrote a new secrets key to {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
