"""The files administrators install: the systemd unit, sysusers entry and example config stay valid."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from stsync_daemon.config import Settings, load_settings
from stsync_daemon.enums import DataTypeFilter, Environment

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "stsync.service"
SYSUSERS = ROOT / "systemd" / "stsync.sysusers.conf"
EXAMPLE = ROOT / "config" / "stsync.example.toml"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


@pytest.fixture(autouse=True)
def no_stsync_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read STSYNC_* variables: the developer's own must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("STSYNC_"):
            monkeypatch.delenv(name)


def unit_settings() -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment in the unit, in order."""
    section, out = "", []
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(key: str) -> list[str]:
    return [v for s, k, v in unit_settings() if s == "Service" and k == key]


def test_unit_has_the_settings_the_daemon_relies_on() -> None:
    service = {k: v for s, k, v in unit_settings() if s == "Service"}
    expected = {
        "Type": "notify",
        "ExecStart": "/opt/stsync/venv/bin/stsyncd run --config /etc/stsync/stsync.toml",
        "WatchdogSec": "60",
        "Restart": "on-failure",
        "TimeoutStopSec": "90",
        "RuntimeDirectory": "stsync",
        "RuntimeDirectoryMode": "0750",
        "StateDirectory": "stsync",
        "ConfigurationDirectory": "stsync",
        "User": "stsync",
        "Group": "stsync",
        "UMask": "0007",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert "PrivateNetwork" not in service
    assert sorted(unit_values("LoadCredential")) == [
        "app_key:/etc/stsync/app_key",
        "secrets.key:/etc/stsync/secrets.key",
    ]
    assert Settings().sync.shutdown_grace_seconds < int(service["TimeoutStopSec"]) / 2


def test_unit_environment_points_the_config_at_the_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What systemd passes (with %d expanded to $CREDENTIALS_DIRECTORY) is what the config reads."""
    (tmp_path / "secrets.key").write_text("k" * 44)
    (tmp_path / "app_key").write_text("ak1.example\n")
    for assignment in unit_values("Environment"):
        name, _, value = assignment.partition("=")
        monkeypatch.setenv(name, value.replace("%d", str(tmp_path)))
    settings = load_settings(EXAMPLE)
    assert settings.secrets.key_file == tmp_path / "secrets.key"
    app_key = settings.servicetitan.resolve_app_key()
    assert app_key is not None and app_key.get_secret_value() == "ak1.example"


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at a real executable, keep everything else.
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={sys.executable}", UNIT.read_text())
    unit = tmp_path / "stsync.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    about_unit = [line for line in (result.stdout + result.stderr).splitlines() if "stsync" in line]
    assert result.returncode == 0, result.stdout + result.stderr
    assert about_unit == []


@needs_systemd_analyze
def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """Guards the test above: verify does report problems in this environment."""
    unit = tmp_path / "stsync.service"
    unit.write_text(UNIT.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert "ProtectClok" in output
    assert "not executable" in output  # ExecStart=/opt/stsync/... does not exist here


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers absent")
def test_sysusers_creates_the_user_and_group(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "--dry-run", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Creating group 'stsync'" in output
    assert "Creating user 'stsync'" in output


# -- the example configuration ---------------------------------------------------------------


def test_example_loads_with_the_original_crontab_schedules() -> None:
    settings = load_settings(EXAMPLE)
    by_name = {s.name: s for s in settings.schedules}
    assert len(by_name) == 3
    hourly, retry, report = by_name.values()
    assert (hourly.action, hourly.cron, hourly.environment) == (
        "process",
        "0 * * * *",
        Environment.PRODUCTION,
    )
    assert hourly.data_type is DataTypeFilter.BOTH
    assert (retry.action, retry.cron, retry.max_age_hours) == ("retry", "0 6,18 * * *", 12)
    assert (report.action, report.cron, report.max_age_hours) == ("report", "0 8 * * *", 24)
    assert all(s.timezone == "UTC" and s.enabled for s in settings.schedules)
    # Only schedules are set: everything else is left at its default.
    assert settings.model_dump(exclude={"schedules"}) == Settings().model_dump(
        exclude={"schedules"}
    )


def expected_keys(model: type[BaseModel], section: str) -> set[tuple[str, str]]:
    """(section, key) for every leaf field, walking nested models (and tuples of them) into sections."""
    out: set[tuple[str, str]] = set()
    for name, field in model.model_fields.items():
        candidates = (field.annotation, *get_args(field.annotation))
        nested = [t for t in candidates if isinstance(t, type) and issubclass(t, BaseModel)]
        if nested:
            out |= expected_keys(nested[0], f"{section}.{name}" if section else name)
        else:
            out.add((section, name))
    return out


_HEADER = re.compile(r"^(?:# ?)?\[\[?([a-z_.]+)\]\]?$")
_KEY = re.compile(r"^(?:# ?)?([a-z_]+) = .+$")


def documented_keys(text: str) -> set[tuple[str, str]]:
    """(section, key) of every key in the file, set or commented out."""
    section, out = "", set()
    for line in text.splitlines():
        if header := _HEADER.match(line):
            section = header.group(1)
        elif key := _KEY.match(line):
            out.add((section, key.group(1)))
    return out


def test_example_documents_every_key_of_every_model() -> None:
    expected = expected_keys(Settings, "")
    documented = documented_keys(EXAMPLE.read_text())
    assert expected - documented == set(), "missing from config/stsync.example.toml"
    assert documented - expected == set(), "unknown keys in config/stsync.example.toml"


def test_commented_values_are_the_defaults() -> None:
    """Uncommenting every key outside [[schedules]] must change nothing (keys defaulting to None
    show an example instead, and are not compared)."""
    lines: list[str] = []
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("[[schedules]]"):
            break
        lines.append(re.sub(r"^# ?(?=\[|[a-z_]+ = )", "", line))
    data: dict[str, Any] = tomllib.loads("\n".join(lines))
    uncommented = Settings(**data)
    defaults = Settings()

    def dump(settings: Settings) -> dict[str, Any]:
        return settings.model_dump(mode="json", exclude={"schedules"})

    def drop_none_defaults(got: dict[str, Any], default: dict[str, Any]) -> None:
        for key, value in default.items():
            if value is None:
                got[key] = None
            elif isinstance(value, dict):
                drop_none_defaults(got[key], value)

    got, want = dump(uncommented), dump(defaults)
    drop_none_defaults(got, want)
    assert got == want
    assert uncommented.database.dsn.get_secret_value() == defaults.database.dsn.get_secret_value()
