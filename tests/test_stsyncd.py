"""`stsyncd`'s admin commands and its start-up errors: one line, non-zero, never a traceback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent


def stsyncd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stsync_daemon.cli.stsyncd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("STSYNC_")}, **(env or {})},
    )


def test_check_config_prints_the_effective_configuration_with_secrets_masked(
    tmp_path: Path,
) -> None:
    config = tmp_path / "stsync.toml"
    config.write_text(
        '[database]\ndsn = "postgresql://stsync:hunter2@db.internal/stsync"\n'
        '[servicetitan]\napp_key = "ak1.super-secret"\n'
        '[[schedules]]\nname = "hourly"\ncron = "0 * * * *"\nenvironment = "production"\n'
    )
    out = stsyncd("check-config", str(config), env={"STSYNC_SYNC__MAX_CONCURRENT": "7"})
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout and "super-secret" not in out.stdout
    assert "max_concurrent = 7" in out.stdout
    assert "[[schedules]]" in out.stdout and 'cron = "0 * * * *"' in out.stdout
    # Modes read as chmod writes them.
    assert 'socket_mode = "0660"' in out.stdout


def test_file_modes_are_octal_in_and_out(tmp_path: Path) -> None:
    config = tmp_path / "stsync.toml"
    config.write_text("[control]\nsocket_mode = 0o640\n")
    out = stsyncd("check-config", str(config))
    assert out.returncode == 0, out.stderr
    assert 'socket_mode = "0640"' in out.stdout
    # Environment values are text: "0600" is octal, as for chmod, never decimal 600.
    out = stsyncd("check-config", str(config), env={"STSYNC_CONTROL__SOCKET_MODE": "0600"})
    assert out.returncode == 0, out.stderr
    assert 'socket_mode = "0600"' in out.stdout
    # What check-config prints loads back to the same mode.
    config.write_text('[control]\nsocket_mode = "0640"\n')
    out = stsyncd("check-config", str(config))
    assert out.returncode == 0 and 'socket_mode = "0640"' in out.stdout, out.stderr


def test_check_config_accepts_a_credential_uuid_and_cron_day_rules(tmp_path: Path) -> None:
    config = tmp_path / "stsync.toml"
    config.write_text(
        '[[schedules]]\nname = "first-or-monday"\ncron = "0 0 1 * mon"\n'
        'credential_id = "0b0c8f4e-6a39-4b8a-9d8e-1f2a3b4c5d6e"\n'
        '[[schedules]]\nname = "weekends"\ncron = "30 6 * * 0,6"\ntimezone = "Europe/Berlin"\n'
    )
    out = stsyncd("check-config", str(config))
    assert out.returncode == 0, out.stderr
    assert 'credential_id = "0b0c8f4e-6a39-4b8a-9d8e-1f2a3b4c5d6e"' in out.stdout


def test_bad_configuration_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "stsync.toml"
    cases = {
        "[sync]\nmax_concurent = 3\n": "sync.max_concurent",
        "[sync]\nmax_concurrent = 0\n": "sync.max_concurrent",
        # A schedule is named by its name, and checked as each tick will use it.
        '[[schedules]]\nname = "x"\ncron = "61 * * * *"\n': "schedules.x.cron: '61 * * * *' is "
        "not a valid crontab expression",
        '[[schedules]]\nname = "hourly"\ncron = "0 * * * *"\ncredential_id = "7"\n': (
            "schedules.hourly.credential_id: '7' is not a credential id"
        ),
        '[[schedules]]\nname = "a"\ncron = "0 * * * *"\n[[schedules]]\nname = "nightly"\n'
        'cron = "0 3 * * *"\ntimezone = "Mars/Base"\n': "schedules.nightly.timezone: unknown time zone",
        '[[schedules]]\nname = "w"\ncron = "0 0 * * 8"\n': "schedules.w.cron",
        '[[schedules]]\nname = "big"\ncron = "0 * * * *"\ncompany_id = "' + "9" * 201 + '"\n': (
            "schedules.big.company_id"
        ),
        '[[schedules]]\nname = "r"\ncron = "0 * * * *"\nmax_concurrent = 0\n': (
            "schedules.r.max_concurrent"
        ),
        # An invalid name cannot name its entry: the position does.
        '[[schedules]]\nname = "a b"\ncron = "0 * * * *"\n': "schedules.0.name",
        '[control]\nsocket_mode = "0900"\n': "control.socket_mode: '0900' is not an octal file mode",
        "[sync\n": "not valid TOML",
        # Each sync holds a pooled connection: the pool must fit the cap plus housekeeping.
        "[database]\npool_max_size = 2\n": "database.pool_max_size (2) is too small for "
        "sync.max_concurrent_total (10) plus 1",
        "[database]\npool_max_size = 4\n[sync]\nmax_concurrent_total = 4\n": "at least 5",
    }
    for text, expected in cases.items():
        config.write_text(text)
        for command in (["check-config", str(config)], ["run", "--config", str(config)]):
            out = stsyncd(*command)
            assert out.returncode == 2, (text, out)
            assert out.stdout == ""
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and expected in lines[0], (text, out.stderr)
            assert "Traceback" not in out.stderr
    out = stsyncd("run", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "not found" in out.stderr


def test_unreachable_database_fails_start_up_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "stsync.toml"
    config.write_text(f'[database]\ndsn = "postgresql://nobody@/x?host={tmp_path}&port=1"\n')
    out = stsyncd("run", "--config", str(config))
    assert out.returncode == 1
    assert "cannot connect to PostgreSQL" in out.stderr and "Traceback" not in out.stderr


def test_generate_key_and_migrate(tmp_path: Path, database_dsn: str) -> None:
    key = tmp_path / "secrets.key"
    out = stsyncd("generate-key", str(key))
    assert out.returncode == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = stsyncd("generate-key", str(key))
    assert again.returncode == 1 and "--force" in again.stderr
    out = stsyncd(
        "migrate",
        env={"STSYNC_DATABASE__DSN": database_dsn, "STSYNC_CONFIG": str(tmp_path / "none.toml")},
    )
    assert out.returncode == 2  # STSYNC_CONFIG names a file that must exist
    config = tmp_path / "stsync.toml"
    config.write_text("")
    out = stsyncd("migrate", "--config", str(config), env={"STSYNC_DATABASE__DSN": database_dsn})
    assert out.returncode == 0, out.stderr
    assert "database at version" in out.stdout


async def test_migrate_on_an_empty_database(tmp_path: Path, empty_database_dsn: str) -> None:
    config = tmp_path / "stsync.toml"
    config.write_text(f'[database]\ndsn = "{empty_database_dsn}"\n')
    out = stsyncd("migrate", "--config", str(config))
    assert out.returncode == 0, out.stderr
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('servicetitan.customers') IS NOT NULL")
    finally:
        await conn.close()
