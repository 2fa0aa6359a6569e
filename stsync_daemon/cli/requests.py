"""Parsed arguments made into the control protocol's requests, before any connection.

Secrets are read here (a file, standard input, or a prompt without echo) and travel only inside
`SecretStr`; a value the protocol rejects becomes a usage error naming its option, never quoting
the value back.
"""

from __future__ import annotations

import argparse
import getpass
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from ..control.protocol import (
    CredentialAdd,
    CredentialsQuery,
    CredentialUpdate,
    DeadLettersQuery,
    ProcessRequest,
    RetryRequest,
    StatusQuery,
)
from ..enums import DataTypeFilter

_OPTION_OF_FIELD = {
    "company_id": "--company-id",
    "company_name": "--company-name",
    "environment": "--environment",
    "tenant_id": "--tenant-id",
    "client_id": "--client-id",
    "client_secret": "--client-secret-file",
    "app_key": "--app-key-file",
    "limit": "--limit",
    "max_concurrent": "--max-concurrent",
    "timeout_seconds": "--timeout",
    "max_age_hours": "--max-age",
    "max_retries": "--max-retries",
    "credential_id": "--credential-id",
    "data_type": "--data-type",
    "include_resolved": "--all",
    "run_id": "--run",
    "since": "--since",
    "status": "--status",
}
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_AGO = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)


class UsageError(Exception):
    """A bad value found after argparse: printed with the command's usage, exit 2."""

    def __init__(self, option: str | None, message: str) -> None:
        super().__init__(f"argument {option}: {message}" if option else message)


M = TypeVar("M", bound=BaseModel)

# Builds a command's request from its arguments (and standard input, for secrets).
Prepare = Callable[[argparse.Namespace, TextIO], BaseModel]


def _model(model: type[M], **values: Any) -> M:
    """Build a request model; a rejected value becomes a usage error naming its option.

    The input value is never quoted back: it may be a secret.
    """
    try:
        return model(**values)
    except ValidationError as error:
        first = error.errors(include_input=False)[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise UsageError(_OPTION_OF_FIELD.get(name, name), first["msg"]) from None


def read_secret(path: str | None, option: str, stdin: TextIO, *, prompt: str) -> SecretStr:
    """A secret from a file or standard input, strictly: one trailing newline is dropped, the rest
    is kept as is; empty or multi-line is a usage error. A terminal gets a prompt without echo."""
    if path is None or path == "-":
        if stdin.isatty():
            try:
                text = getpass.getpass(prompt)
            except EOFError:
                text = ""
        else:
            text = stdin.read()
        source = "standard input"
    else:
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                text = handle.read()
        except UnicodeDecodeError:
            raise UsageError(option, f"{path} is not UTF-8 text") from None
        except OSError as error:
            raise UsageError(option, f"cannot read {path}: {error.strerror or error}") from None
        source = path
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise UsageError(option, f"the secret from {source} is empty")
    if "\n" in text or "\r" in text:
        raise UsageError(option, f"the secret from {source} has more than one line")
    return SecretStr(text)


def parse_when(text: str, *, now: datetime, utc: bool) -> datetime:
    """`--since WHEN`: ISO 8601 (a date, or a date and time; without a zone it is local time, or
    UTC with --utc) or a time ago (`30m`, `2h`, `3d`, `1w`). Always an aware datetime."""
    ago = _AGO.fullmatch(text.strip())
    if ago:
        try:
            return now - timedelta(**{_UNITS[ago.group(2).lower()]: int(ago.group(1))})
        except OverflowError:
            raise UsageError("--since", f"{text!r} is too long ago") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            "--since",
            f"invalid time: {text!r} (ISO 8601 like 2024-05-01 or 2024-05-01T06:00, or a time "
            "ago like 30m, 2h, 3d, 1w)",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC) if utc else moment.astimezone()
    return moment


def _quiet_alone(args: argparse.Namespace) -> None:
    if args.quiet and args.json_output:
        raise UsageError("-q/--quiet", "not with --json-output (which prints one document)")


def prepare_process(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    """`process`: --estimate only makes sense with --dry-run."""
    if args.estimate and not args.dry_run:
        raise UsageError("--estimate", "only with --dry-run")
    _quiet_alone(args)
    return _model(
        ProcessRequest,
        environment=args.environment,
        company_id=args.company_id,
        credential_id=args.credential_id,
        data_type=args.data_type,
        dry_run=args.dry_run,
        estimate=args.estimate,
        max_concurrent=args.max_concurrent,
        timeout_seconds=args.timeout,
        full=args.full,
    )


def prepare_retry(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    """`retry`: the window, the attempt cap and the run knobs."""
    _quiet_alone(args)
    return _model(
        RetryRequest,
        max_age_hours=args.max_age,
        max_retries=args.max_retries,
        exclude_auth_errors=args.exclude_auth_errors,
        dry_run=args.dry_run,
        max_concurrent=args.max_concurrent,
        timeout_seconds=args.timeout,
    )


def prepare_status(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    """`status`: its filters, sent as query parameters; `--since` as an absolute UTC time."""
    since = (
        parse_when(args.since, now=datetime.now(UTC), utc=args.utc)
        if args.since is not None
        else None
    )
    return _model(
        StatusQuery,
        company_id=args.company_id,
        run_id=args.run,
        environment=args.environment,
        data_type=args.data_type,
        running_only=args.running_only,
        failed_only=args.failed_only,
        last_24h=args.last_24h,
        since=since.astimezone(UTC) if since is not None else None,
        limit=args.limit,
    )


def prepare_credentials_list(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    """`credentials list`: its filters, sent as query parameters."""
    return _model(
        CredentialsQuery,
        environment=args.environment,
        company_id=args.company_id,
        status=args.status,
    )


def prepare_dead_letters(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    """`dead-letters`: its filters; `both` data types is no filter."""
    both = args.data_type == DataTypeFilter.BOTH.value
    return _model(
        DeadLettersQuery,
        credential_id=args.credential_id,
        company_id=args.company_id,
        environment=args.environment,
        data_type=None if both else args.data_type,
        include_resolved=args.include_resolved,
        limit=args.limit,
    )


def prepare_credentials_add(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    """`credentials add`: the secrets read now; standard input carries at most one."""
    if args.client_secret_file == "-" and args.app_key_file == "-":
        raise UsageError("--app-key-file", "standard input already carries the client secret")
    secret = read_secret(
        args.client_secret_file, "--client-secret-file", stdin, prompt="Client secret (hidden): "
    )
    app_key = None
    if args.app_key_file is not None:
        if args.app_key_file == "-" and args.client_secret_file is None:
            raise UsageError("--app-key-file", "standard input already carries the client secret")
        app_key = read_secret(args.app_key_file, "--app-key-file", stdin, prompt="App key: ")
    return _model(
        CredentialAdd,
        company_id=args.company_id,
        company_name=args.company_name,
        environment=args.environment,
        tenant_id=args.tenant_id,
        client_id=args.client_id,
        client_secret=secret,
        app_key=app_key,
        schedule_enabled=args.schedule_enabled,
    )


def prepare_credentials_update(args: argparse.Namespace, stdin: TextIO) -> BaseModel:
    """`credentials update`: only what is given; the identity cannot change."""
    for option, value in (
        ("--company-id", args.fixed_company_id),
        ("--environment", args.fixed_environment),
        ("--tenant-id", args.fixed_tenant_id),
    ):
        if value is not None:
            raise UsageError(
                option, "cannot be changed; add a new credential and remove this one instead"
            )
    if args.client_secret_file == "-" and args.app_key_file == "-":
        raise UsageError("--app-key-file", "standard input already carries the client secret")
    secret = (
        read_secret(
            args.client_secret_file, "--client-secret-file", stdin, prompt="Client secret: "
        )
        if args.client_secret_file is not None
        else None
    )
    app_key = (
        read_secret(args.app_key_file, "--app-key-file", stdin, prompt="App key: ")
        if args.app_key_file is not None
        else None
    )
    given = {
        key: value
        for key, value in {
            "company_name": args.company_name,
            "client_id": args.client_id,
            "client_secret": secret,
            "app_key": app_key,
            "clear_app_key": args.clear_app_key or None,
            "schedule_enabled": args.schedule_enabled,
        }.items()
        if value is not None
    }
    if not given:
        raise UsageError(
            None,
            "nothing to change: give --company-name, --client-id, --client-secret-file, "
            "--app-key-file, --clear-app-key, --schedule or --no-schedule",
        )
    return _model(CredentialUpdate, **given)


def wire(model: BaseModel) -> dict[str, Any]:
    """The request body: unset fields left out, secrets revealed (only for the socket)."""
    body: dict[str, Any] = {}
    for key, value in model.model_dump(mode="python", exclude_none=True).items():
        if isinstance(value, SecretStr):
            body[key] = value.get_secret_value()
        elif isinstance(value, uuid.UUID):
            body[key] = str(value)
        elif isinstance(value, datetime):
            body[key] = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        else:
            body[key] = value
    return body


def query_params(model: BaseModel) -> dict[str, str]:
    """A query model as a query string: unset and false values left out, the rest as text."""
    return {
        key: ("true" if value is True else str(value))
        for key, value in wire(model).items()
        if value is not False
    }
