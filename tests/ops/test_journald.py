"""Under systemd every stderr line carries its syslog priority, so `journalctl -p err` works."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from stsync_daemon.config import LoggingConfig
from stsync_daemon.logs import configure_logging, log_event

ROOT = Path(__file__).resolve().parents[2]
LEVELS = {
    logging.CRITICAL: "<2>",
    logging.ERROR: "<3>",
    logging.WARNING: "<4>",
    logging.INFO: "<6>",
    logging.DEBUG: "<7>",
}


def identity(path: Path) -> str:
    found = path.stat()
    return f"{found.st_dev}:{found.st_ino}"


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def log_every_level(stream: TextIO, fmt: str, environ: dict[str, str]) -> list[str]:
    configure_logging(LoggingConfig(level="DEBUG", format=fmt), stream=stream, environ=environ)
    log = logging.getLogger("stsync.test")
    for level in LEVELS:
        log_event(log, level, "test.event", level_name=logging.getLevelName(level))
    stream.flush()
    return Path(stream.name).read_text().splitlines()


@pytest.mark.usefixtures("root_restored")
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_lines_to_the_journal_start_with_their_priority(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "journal-stream"
    with path.open("w") as stream:
        lines = log_every_level(stream, fmt, {"JOURNAL_STREAM": identity(path)})
    assert [line[:3] for line in lines] == list(LEVELS.values())
    if fmt == "json":
        assert [json.loads(line[3:])["level_name"] for line in lines] == [
            logging.getLevelName(level) for level in LEVELS
        ]


@pytest.mark.usefixtures("root_restored")
def test_no_prefix_anywhere_else(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("")
    for environ in ({}, {"JOURNAL_STREAM": identity(other)}, {"JOURNAL_STREAM": "garbage"}):
        path = tmp_path / "redirected"
        with path.open("w") as stream:
            lines = log_every_level(stream, "json", environ)
        assert all(line.startswith("{") for line in lines), (environ, lines)


def test_the_daemons_fatal_start_up_error_is_priority_err(tmp_path: Path) -> None:
    config = tmp_path / "stsync.toml"
    config.write_text(f'[database]\ndsn = "postgresql://nobody@/x?host={tmp_path}&port=1"\n')
    stderr = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STSYNC_")}
    with stderr.open("w") as err:
        env["JOURNAL_STREAM"] = identity(stderr)
        out = subprocess.run(
            [sys.executable, "-m", "stsync_daemon.cli.stsyncd", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
    assert out.returncode == 1
    lines = stderr.read_text().splitlines()
    assert lines and all(line[:1] == "<" and line[2:3] == ">" for line in lines), lines
    assert lines[-1].startswith("<3>stsyncd: cannot connect to PostgreSQL"), lines
    assert any(line.startswith('<6>{"ts"') for line in lines), lines


def test_the_unit_lets_journald_read_the_prefix() -> None:
    from tests.daemon.test_ops_files import unit_values

    assert unit_values("SyslogLevelPrefix") == ["yes"]
    assert unit_values("StandardError") in ([], ["journal"], ["inherit"])
