"""Configuration: one TOML file plus `STSYNC_…` environment overrides, parsed into frozen models.

Nothing deeper in the daemon reads the environment or raw dicts: everything comes from `Settings`.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .enums import DataTypeFilter, Environment
from .errors import ConfigError
from .limits import (
    BACKFILL_CONCURRENCY_DEFAULT,
    BACKFILL_MIN_RECORDS_DEFAULT,
    BACKFILL_PAGE_SIZE_DEFAULT,
    BACKFILL_PAGE_SIZE_MAX,
    MAX_CONCURRENT_DEFAULT,
    MAX_CONCURRENT_TOTAL_DEFAULT,
    RETRY_MAX_AGE_HOURS_DEFAULT,
    RETRY_MAX_AGE_HOURS_MAX,
    RETRY_MAX_RETRIES_DEFAULT,
    SYNC_TIMEOUT_DEFAULT,
    CompanyId,
    Concurrency,
    Seconds,
)
from .requests import ProcessRequest, RetryRequest

DEFAULT_CONFIG_PATH = Path("/etc/stsync/stsync.toml")
# Pooled connections kept beyond the syncs' own: claims, supervision, heartbeats, the control socket.
HOUSEKEEPING_CONNECTIONS = 1

PRODUCTION_AUTH_URL = "https://auth.servicetitan.io"
PRODUCTION_API_URL = "https://api.servicetitan.io"
INTEGRATION_AUTH_URL = "https://auth-integration.servicetitan.io"
INTEGRATION_API_URL = "https://api-integration.servicetitan.io"


def _octal(value: object) -> object:
    """A mode written as text is octal, as for chmod: "0660" (an environment value is always text)."""
    if isinstance(value, str):
        digits = value.strip().lower().removeprefix("0o")
        if not digits or any(c not in "01234567" for c in digits):
            raise ValueError(f"{value!r} is not an octal file mode such as 0660")
        return int(digits, 8)
    return value


# A permission mode: octal text or a TOML integer (0o660) in, "0660" out in check-config.
FileMode = Annotated[
    int,
    BeforeValidator(_octal),
    Field(ge=0, le=0o777),
    PlainSerializer(lambda mode: f"{mode:04o}", return_type=str, when_used="json"),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseConfig(_Frozen):
    """Where the sync log, credentials and records live."""

    dsn: SecretStr = SecretStr("postgresql:///stsync")
    pool_min_size: Annotated[int, Field(ge=1)] = 2
    pool_max_size: Annotated[int, Field(ge=2)] = 20


class EnvironmentURLs(_Frozen):
    """Auth and API bases of one ServiceTitan environment (the sandbox can stand in for either)."""

    auth_url: str
    api_url: str

    @field_validator("auth_url", "api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


class EnvironmentsConfig(_Frozen):
    """The two ServiceTitan environments."""

    production: EnvironmentURLs = EnvironmentURLs(
        auth_url=PRODUCTION_AUTH_URL, api_url=PRODUCTION_API_URL
    )
    integration: EnvironmentURLs = EnvironmentURLs(
        auth_url=INTEGRATION_AUTH_URL, api_url=INTEGRATION_API_URL
    )

    def urls(self, environment: Environment) -> EnvironmentURLs:
        """The bases of one environment."""
        return self.production if environment is Environment.PRODUCTION else self.integration


class ServiceTitanConfig(_Frozen):
    """How stsync talks to ServiceTitan."""

    app_key: SecretStr | None = None
    app_key_file: Path | None = None
    environments: EnvironmentsConfig = EnvironmentsConfig()
    requests_per_second: Annotated[float, Field(gt=0, le=1000)] = 55.0
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 100.0
    max_attempts: Annotated[int, Field(ge=1, le=50)] = 8
    max_retry_seconds: Annotated[float, Field(gt=0)] = 300.0
    token_refresh_margin_seconds: Annotated[float, Field(ge=0)] = 60.0
    connections: Annotated[int, Field(ge=1, le=1000)] = 100
    max_response_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024 * 1024

    def resolve_app_key(self) -> SecretStr | None:
        """The app key from the config or its file (systemd `LoadCredential`)."""
        if self.app_key is not None:
            return self.app_key
        if self.app_key_file is not None:
            try:
                return SecretStr(self.app_key_file.read_text().strip())
            except OSError as exc:
                raise ConfigError(
                    f"servicetitan.app_key_file: cannot read {self.app_key_file}: {exc.strerror}"
                ) from None
        return None


class SyncConfig(_Frozen):
    """Knobs of batch runs and of each sync."""

    max_concurrent: Concurrency = MAX_CONCURRENT_DEFAULT
    max_concurrent_total: Concurrency = MAX_CONCURRENT_TOTAL_DEFAULT
    timeout_seconds: Seconds = SYNC_TIMEOUT_DEFAULT
    page_size: Annotated[int, Field(ge=1, le=5000)] = 500
    commit_batch_records: Annotated[int, Field(ge=1, le=100_000)] = 5000
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 30.0
    # A first (or --full) sync of a tenant with at least this many records (the list's totalCount)
    # reads the list endpoints, `backfill_concurrency` pages in flight, then catches up with the
    # export; 0 turns backfills off.
    backfill_min_records: Annotated[int, Field(ge=0)] = BACKFILL_MIN_RECORDS_DEFAULT
    backfill_concurrency: Annotated[int, Field(ge=1, le=60)] = BACKFILL_CONCURRENCY_DEFAULT
    backfill_page_size: Annotated[int, Field(ge=1, le=BACKFILL_PAGE_SIZE_MAX)] = (
        BACKFILL_PAGE_SIZE_DEFAULT
    )


class SecretsConfig(_Frozen):
    """The key that encrypts client secrets at rest."""

    key_file: Path | None = None


class ControlConfig(_Frozen):
    """The local control channel served to stsyncctl."""

    socket: Path | None = None
    socket_mode: FileMode = 0o660
    # Who may read and run syncs (default: the daemon's own group), and who may also change
    # credentials besides root and the daemon's user. Resolved when the daemon starts.
    allowed_group: str | None = None
    admin_group: str | None = None

    def socket_path(self) -> Path:
        """The configured socket, else `$RUNTIME_DIRECTORY/control.sock`, else /run/stsync."""
        return self.socket or default_socket_path()


class MetricsConfig(_Frozen):
    """The Prometheus endpoint."""

    enabled: bool = True
    listen: str = "127.0.0.1:9841"
    # One last-success series per (credential, data type): opt-in, since 10,000 tenants would make
    # 20,000 series per instance. The default alerts work from per-environment aggregates.
    per_credential: bool = False
    # A scheduled (credential, data type) with no success for this long counts as stale.
    stale_after_hours: Annotated[float, Field(gt=0)] = 2.0
    # How often the metrics read from the database (shared by every instance) are refreshed.
    refresh_seconds: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9841")
        return value

    @property
    def host(self) -> str:
        """Host part of `listen`, without IPv6 brackets."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """Port part of `listen`."""
        return int(self.listen.rpartition(":")[2])


class SchedulerConfig(_Frozen):
    """How cron ticks are handled."""

    misfire_grace_seconds: Annotated[float, Field(gt=0)] = 300.0


class ClusterConfig(_Frozen):
    """Several daemons on one database behave as one service; a single one needs nothing here."""

    instance: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    orphan_sweep_seconds: Annotated[float, Field(gt=0)] = 30.0
    lease_seconds: Annotated[float, Field(ge=5)] = 30.0

    def instance_name(self) -> str:
        """The configured name, else the host name: stable across restarts, unique across hosts."""
        return self.instance or socket.gethostname()


class RetentionConfig(_Frozen):
    """How long history is kept (days; 0 keeps it forever). Pruned by housekeeping in small
    batches, so a first pass over years of history never holds up syncs."""

    sync_log_days: Annotated[int, Field(ge=0)] = 90
    runs_days: Annotated[int, Field(ge=0)] = 30
    dead_letters_days: Annotated[int, Field(ge=0)] = 90  # resolved ones; open ones stay
    interval_seconds: Annotated[float, Field(gt=0)] = 3600.0
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000


class LoggingConfig(_Frozen):
    """Structured logs: JSON lines when not on a TTY."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


# What a schedule's name may be; error messages name a schedule by it (`schedules.hourly.cron`).
_SCHEDULE_NAME = r"[A-Za-z0-9_.-]{1,100}"


class ScheduleConfig(_Frozen):
    """One `[[schedules]]` entry: a cron trigger and what it runs."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=rf"^{_SCHEDULE_NAME}$")]
    cron: str
    timezone: str = "UTC"
    action: Literal["process", "retry", "report"] = "process"
    environment: Environment | None = None
    company_id: CompanyId | None = None
    credential_id: uuid.UUID | None = None
    data_type: DataTypeFilter = DataTypeFilter.BOTH
    max_concurrent: Concurrency | None = None
    timeout_seconds: Seconds | None = None
    max_age_hours: Annotated[float, Field(gt=0, le=RETRY_MAX_AGE_HOURS_MAX)] = (
        RETRY_MAX_AGE_HOURS_DEFAULT
    )
    max_retries: Annotated[int, Field(ge=1)] = RETRY_MAX_RETRIES_DEFAULT
    exclude_auth_errors: bool = False
    full: bool = False
    enabled: bool = True

    def request(self) -> ProcessRequest | RetryRequest | None:
        """What each tick asks of the runner, as `stsyncctl` would; None for the report."""
        if self.action == "report":
            return None
        if self.action == "retry":
            return RetryRequest(
                max_age_hours=self.max_age_hours,
                max_retries=self.max_retries,
                exclude_auth_errors=self.exclude_auth_errors,
                max_concurrent=self.max_concurrent,
                timeout_seconds=self.timeout_seconds,
            )
        return ProcessRequest(
            environment=self.environment,
            company_id=self.company_id,
            credential_id=self.credential_id,
            data_type=self.data_type,
            max_concurrent=self.max_concurrent,
            timeout_seconds=self.timeout_seconds,
            full=self.full,
            include_errored=False,
        )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as UTC)"
            ) from None
        return value

    @field_validator("credential_id", mode="wrap")
    @classmethod
    def _credential_uuid(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(
                f"{value!r} is not a credential id: use the UUID that `stsyncctl credentials list` shows"
            ) from None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from .cron import parse

        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not a valid crontab expression "
                f"(5 fields: minute hour day month weekday, e.g. '0 * * * *'): {exc}"
            ) from None
        return value


class Settings(BaseSettings):
    """The whole configuration. Precedence: environment, then the TOML file, then defaults."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="STSYNC_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    database: DatabaseConfig = DatabaseConfig()
    servicetitan: ServiceTitanConfig = ServiceTitanConfig()
    sync: SyncConfig = SyncConfig()
    secrets: SecretsConfig = SecretsConfig()
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig = MetricsConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    cluster: ClusterConfig = ClusterConfig()
    logging: LoggingConfig = LoggingConfig()
    retention: RetentionConfig = RetentionConfig()
    schedules: tuple[ScheduleConfig, ...] = ()

    @model_validator(mode="after")
    def _pool_fits_the_work(self) -> Settings:
        # Each sync holds one pooled connection; the daemon's own loops need one more to make
        # progress, or a full pool would wait on itself.
        need = self.sync.max_concurrent_total + HOUSEKEEPING_CONNECTIONS
        if self.database.pool_max_size < need:
            raise ValueError(
                f"database.pool_max_size ({self.database.pool_max_size}) is too small for "
                f"sync.max_concurrent_total ({self.sync.max_concurrent_total}) plus "
                f"{HOUSEKEEPING_CONNECTIONS} for the daemon's housekeeping: raise pool_max_size "
                f"to at least {need} or lower max_concurrent_total"
            )
        return self

    @field_validator("schedules")
    @classmethod
    def _unique_names(cls, value: tuple[ScheduleConfig, ...]) -> tuple[ScheduleConfig, ...]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"schedule names must be unique; repeated: {', '.join(dupes)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init carries the TOML file's content, so the environment must come first to win.
        return (env_settings, init_settings)


def default_socket_path() -> Path:
    """Where the daemon listens and stsyncctl connects when nothing says otherwise."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "control.sock"
    return Path("/run/stsync/control.sock")


def default_config_path() -> Path:
    """`$STSYNC_CONFIG`, else /etc/stsync/stsync.toml."""
    return Path(os.environ.get("STSYNC_CONFIG") or DEFAULT_CONFIG_PATH)


def _describe(error: ValidationError, data: dict[str, Any]) -> str:
    first = error.errors()[0]
    key = ".".join(_key_part(first["loc"], i, data) for i in range(len(first["loc"])))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check its spelling and section)"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    # A check across sections names its keys itself.
    return f"{key}: {message}{more}" if key else f"{message}{more}"


def _key_part(loc: tuple[int | str, ...], index: int, data: dict[str, Any]) -> str:
    """`schedules.hourly`, not `schedules.0`: an operator knows a schedule by its name."""
    part = loc[index]
    if index == 1 and loc[0] == "schedules" and isinstance(part, int):
        schedules = data.get("schedules")
        if isinstance(schedules, list) and 0 <= part < len(schedules):
            entry = schedules[part]
            name = entry.get("name") if isinstance(entry, dict) else None
            if isinstance(name, str) and re.fullmatch(_SCHEDULE_NAME, name):
                return name
    return str(part)


def load_settings(path: Path | None, *, required: bool = True) -> Settings:
    """Read, merge and validate; any problem becomes one `ConfigError` line naming the key."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            if required:
                raise ConfigError(
                    f"config file {path} not found (pass --config PATH or set STSYNC_CONFIG)"
                ) from None
        except PermissionError:
            raise ConfigError(f"config file {path} is not readable by this user") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc, data)}") from None
