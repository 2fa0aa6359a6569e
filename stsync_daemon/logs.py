"""Structured logs on stdlib `logging`: an event name plus fields, one line per event, no secret.

JSON lines (for journald, Loki, jq) when the stream is not a terminal, compact `ts LEVEL event k=v`
text on a terminal. Records from libraries (aiohttp, asyncpg, APScheduler) become event `log` with
their message, so every line has the same shape.

When the stream is journald's (`$JOURNAL_STREAM` names its device and inode), each line starts with
its syslog priority (`<3>` error, `<4>` warning, `<6>` info…): journald strips it and records the
priority (SyslogLevelPrefix=yes, the default), so `journalctl -p err -u stsync` works. Anywhere else
the prefix would be noise, so it is only added there.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from pydantic import SecretBytes, SecretStr

from .config import LoggingConfig

MASK = "***"
_FIELDS_ATTR = "stsync_fields"
_RESERVED = frozenset({"ts", "level", "logger", "event", "message", "exc"})
_SECRET_NAME = re.compile(
    r"secret|token|passw(or)?d|authorization|app[-_]?key|api[-_]?key", re.IGNORECASE
)
# Defence in depth for free text (library messages, exception text): credentials in URLs,
# bearer tokens and key=value pairs named like secrets.
_TEXT_SECRETS = (
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@"), r"\1" + MASK + "@"),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + MASK),
    (
        re.compile(
            r"(?i)(\b[a-z_-]*(?:secret|token|password|app[-_]key|api[-_]key)[a-z_-]*[\"']?\s*[=:]\s*[\"']?)"
            r"[^\s\"'&,;}]+"
        ),
        r"\1" + MASK,
    ),
)


def is_secret_name(name: str) -> bool:
    """Whether a field name says its value is a secret (client_secret, access_token, app_key…)."""
    return bool(_SECRET_NAME.search(name))


def scrub_text(text: str) -> str:
    """Mask secrets that look like secrets inside free text."""
    for pattern, replacement in _TEXT_SECRETS:
        text = pattern.sub(replacement, text)
    return text


def sanitize(value: Any, name: str = "") -> Any:
    """A copy of a field value that is safe to log and serializable: secrets masked, keys as str."""
    if name and is_secret_name(name) and value is not None:
        return MASK
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {str(k): sanitize(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [sanitize(v) for v in value]
    return value


def log_event(
    logger: logging.Logger,
    level: int,
    event: str,
    /,
    *,
    exc_info: Any = None,
    **fields: Any,
) -> None:
    """Log `event` (a stable dotted name like `sync.started`) with fields.

    e.g. `log_event(log, logging.INFO, "sync.finished", credential_id=7, records=120)`.
    """
    if logger.isEnabledFor(level):
        logger.log(level, event, exc_info=exc_info, extra={_FIELDS_ATTR: fields}, stacklevel=2)


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")


def _payload(record: logging.LogRecord) -> dict[str, Any]:
    """The ordered fields of one line: ts, level, logger, event, then the event's fields."""
    out: dict[str, Any] = {
        "ts": _timestamp(record),
        "level": record.levelname,
        "logger": record.name,
    }
    fields = getattr(record, _FIELDS_ATTR, None)
    if isinstance(fields, dict):
        out["event"] = str(record.msg)
        for key, value in fields.items():
            out[f"{key}_" if key in _RESERVED else key] = sanitize(value, key)
    else:
        out["event"] = "log"
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not lose the line
            message = f"{record.msg!r} % {record.args!r}"
        out["message"] = scrub_text(message)
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        out["exc"] = scrub_text(text)
    elif record.stack_info:
        out["exc"] = scrub_text(record.stack_info)
    return out


def _default(value: Any) -> Any:
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    return str(value)


def _json_safe(value: Any) -> str:
    return orjson.dumps(value, default=_default).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per line; newlines in values (tracebacks) are escaped by JSON itself."""

    def format(self, record: logging.LogRecord) -> str:
        payload = _payload(record)
        try:
            return _json_safe(payload)
        except TypeError:  # e.g. a dict key orjson refuses: fall back to strings
            return _json_safe({k: v if isinstance(v, str) else repr(v) for k, v in payload.items()})


_BARE = re.compile(r"^[^\s\"=\\]+$")


def _text_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | float):
        return str(value)
    else:
        try:
            text = _json_safe(value)  # lists and dicts read as JSON: tags=["a","b"]
        except TypeError:
            text = repr(value)
        return text if not any(c.isspace() for c in text) else _json_safe(text)
    return text if _BARE.match(text) else _json_safe(text)


class TextFormatter(logging.Formatter):
    """`ts LEVEL event k=v …` for people at a terminal; values with spaces are quoted, one line."""

    def format(self, record: logging.LogRecord) -> str:
        payload = _payload(record)
        ts = payload.pop("ts").replace("+00:00", "Z")
        level = payload.pop("level")
        event = payload.pop("event")
        logger_name = payload.pop("logger")
        if event == "log":
            payload = {"logger": logger_name, **payload}
        parts = [ts, f"{level:<7}", event]
        parts.extend(f"{key}={_text_value(value)}" for key, value in payload.items())
        return " ".join(parts)


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (critical 2, error 3, warning 4, info 6, debug 7)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def writes_to_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journald stream that `$JOURNAL_STREAM` (`DEVICE:INODE`) names.

    Comparing the file identity (as sd_journal_stream_fd(3) advises) keeps the prefix off a
    redirected stderr that merely inherited the variable.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        found = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False
    return (found.st_dev, found.st_ino) == (int(device), int(inode))


def journal_prefix(levelno: int, stream: TextIO | None = None) -> str:
    """`<N>` for a line written outside logging (a fatal one-line error) to journald, else ""."""
    target = stream if stream is not None else sys.stderr
    return f"<{syslog_priority(levelno)}>" if writes_to_journal(target) else ""


class _StsyncHandler(logging.StreamHandler[TextIO]):
    """Marks the handler configure_logging installed, so a second call replaces it."""

    def __init__(self, stream: TextIO, *, priority_prefix: bool) -> None:
        super().__init__(stream)
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return f"<{syslog_priority(record.levelno)}>{line}" if self.priority_prefix else line


def configure_logging(
    config: LoggingConfig,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send every log record to `stream` (stderr by default, which journald collects).

    `environ` (default `os.environ`) is read for `$JOURNAL_STREAM` only.
    """
    stream = stream if stream is not None else sys.stderr
    if config.format == "auto":
        try:
            use_json = not stream.isatty()
        except (AttributeError, ValueError):
            use_json = True
    else:
        use_json = config.format == "json"
    handler = _StsyncHandler(stream, priority_prefix=writes_to_journal(stream, environ))
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StsyncHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.level)
    return handler
