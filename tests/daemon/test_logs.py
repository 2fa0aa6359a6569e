"""Logs an operator can grep and parse: one line per event, fields, UTC timestamps, no secrets."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import datetime

import orjson
import pytest
from pydantic import SecretStr

from stsync_daemon.config import LoggingConfig
from stsync_daemon.enums import DataType, ErrorCategory
from stsync_daemon.logs import configure_logging, log_event, scrub_text

SECRET = "s3cr3t-VALUE-xyz"


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def root_restored() -> Iterator[None]:
    """configure_logging changes the root logger: put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.usefixtures("root_restored")
def test_json_lines_when_not_a_tty() -> None:
    out = io.StringIO()
    configure_logging(LoggingConfig(), stream=out)
    log = logging.getLogger("stsync.test")
    log_event(
        log,
        logging.INFO,
        "sync.finished",
        credential_id=7,
        company="Acme Plumbing",
        data_type=DataType.INVOICES,
        records=120,
        error_category=None,
    )
    (line,) = lines(out)
    doc = orjson.loads(line)
    assert doc == {
        "ts": doc["ts"],
        "level": "INFO",
        "logger": "stsync.test",
        "event": "sync.finished",
        "credential_id": 7,
        "company": "Acme Plumbing",
        "data_type": "invoices",
        "records": 120,
        "error_category": None,
    }
    assert list(doc)[:4] == ["ts", "level", "logger", "event"]
    ts = datetime.fromisoformat(doc["ts"])
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.usefixtures("root_restored")
def test_exception_is_one_escaped_field() -> None:
    out = io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream=FakeTTY())
    configure_logging(LoggingConfig(format="json"), stream=out)  # replaces the first handler
    log = logging.getLogger("stsync.test")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log_event(
            log, logging.ERROR, "sync.failed", exc_info=True, error_category=ErrorCategory.API
        )
    (line,) = lines(out)
    doc = orjson.loads(line)
    assert doc["event"] == "sync.failed"
    assert doc["error_category"] == "api"
    assert doc["exc"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom\nsecond line" in doc["exc"]


@pytest.mark.usefixtures("root_restored")
def test_text_on_a_tty() -> None:
    out = FakeTTY()
    configure_logging(LoggingConfig(level="DEBUG"), stream=out)
    log = logging.getLogger("stsync.test")
    log_event(log, logging.DEBUG, "sync.page_committed", company="Acme Plumbing", records=500)
    try:
        raise KeyError("missing")
    except KeyError:
        log_event(log, logging.WARNING, "sync.failed", exc_info=True, sync_id=3)
    logging.getLogger("aiohttp.client").info("plain %s message", "library")
    first, second, third = lines(out)
    ts, level, event, _rest = first.split(maxsplit=3)
    assert datetime.fromisoformat(ts).utcoffset() is not None and ts.endswith("Z")
    assert (level, event) == ("DEBUG", "sync.page_committed")
    assert first.endswith('company="Acme Plumbing" records=500')
    assert ' WARNING sync.failed sync_id=3 exc="Traceback' in second
    assert "\\nKeyError: 'missing'" in second
    assert third.endswith('log logger=aiohttp.client message="plain library message"')


@pytest.mark.usefixtures("root_restored")
def test_level_filters() -> None:
    out = io.StringIO()
    configure_logging(LoggingConfig(level="WARNING"), stream=out)
    log_event(logging.getLogger("stsync.test"), logging.INFO, "sync.started")
    assert out.getvalue() == ""


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.usefixtures("root_restored")
def test_secrets_never_appear(fmt: str) -> None:
    out = io.StringIO()
    configure_logging(LoggingConfig.model_validate({"format": fmt}), stream=out)
    log = logging.getLogger("stsync.test")
    log_event(
        log,
        logging.INFO,
        "credential.added",
        client_id="cid-visible",
        client_secret=SECRET,
        access_token=SECRET,
        refresh_token=SECRET,
        password=SECRET,
        Authorization=f"Bearer {SECRET}",
        app_key=SECRET,
        wrapped=SecretStr(SECRET),
        nested={
            "headers": {"authorization": SECRET, "ST-App-Key": SECRET},
            "items": [SecretStr(SECRET)],
        },
        dsn=f"postgresql://stsync:{SECRET}@db.example/stsync",
        error=f'POST /connect/token -> 400 {{"client_secret": "{SECRET}"}} Bearer {SECRET}',
    )
    try:
        raise ValueError(f"cannot connect to postgresql://u:{SECRET}@host/db with token={SECRET}")
    except ValueError:
        log_event(log, logging.ERROR, "db.failed", exc_info=True)
    logging.getLogger("aiohttp.client").info("headers Authorization: Bearer %s", SECRET)
    text = out.getvalue()
    assert SECRET not in text
    assert "cid-visible" in text
    assert "***" in text
    assert "db.example" in text  # the host stays, for operators
    assert len(lines(out)) == 3


def test_scrub_text_keeps_ordinary_text() -> None:
    assert scrub_text("synced 120 records for company 42") == "synced 120 records for company 42"
    assert scrub_text("https://api.example/x?page=2") == "https://api.example/x?page=2"
    assert scrub_text("client_secret=abc&x=1") == "client_secret=***&x=1"
