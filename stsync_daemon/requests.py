"""What operators ask of the daemon: validated, frozen requests shared by the control channel,
the CLI and the schedules (which build the same requests as `stsyncctl` does)."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .enums import DataType, DataTypeFilter, Environment
from .limits import (
    BIGINT_MAX,
    DEAD_LETTERS_LIMIT_MAX,
    RETRY_MAX_AGE_HOURS_DEFAULT,
    RETRY_MAX_AGE_HOURS_MAX,
    RETRY_MAX_RETRIES_DEFAULT,
    STATUS_LIMIT_DEFAULT,
    STATUS_LIMIT_MAX,
    CompanyId,
    Concurrency,
    Seconds,
    Text,
)


class _Request(BaseModel):
    # No infinities or NaN: JSON cannot carry them, and query strings must not smuggle them in.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class StatusQuery(_Request):
    """Filters of `stsyncctl status`."""

    company_id: CompanyId | None = None
    running_only: bool = False
    failed_only: bool = False
    last_24h: bool = False
    limit: Annotated[int, Field(ge=1, le=STATUS_LIMIT_MAX)] = STATUS_LIMIT_DEFAULT


class ProcessRequest(_Request):
    """`stsyncctl process`: run syncs now (or show the plan)."""

    environment: Environment | None = None
    company_id: CompanyId | None = None
    credential_id: uuid.UUID | None = None
    data_type: DataTypeFilter = DataTypeFilter.BOTH
    dry_run: bool = False
    estimate: bool = False
    max_concurrent: Concurrency | None = None
    timeout_seconds: Seconds | None = None
    full: bool = False
    # Manual runs include credentials in `error` (an operator may be checking a fix); scheduled not.
    include_errored: bool = True


class RetryRequest(_Request):
    """`stsyncctl retry`: re-run recent failed or timed-out syncs."""

    max_age_hours: Annotated[float, Field(gt=0, le=RETRY_MAX_AGE_HOURS_MAX)] = (
        RETRY_MAX_AGE_HOURS_DEFAULT
    )
    max_retries: Annotated[int, Field(ge=1)] = RETRY_MAX_RETRIES_DEFAULT
    exclude_auth_errors: bool = False
    dry_run: bool = False
    max_concurrent: Concurrency | None = None
    timeout_seconds: Seconds | None = None


class CredentialAdd(_Request):
    """`stsyncctl credentials add`; the secret travels only over the local socket."""

    company_id: Annotated[CompanyId, Field(min_length=1)]
    company_name: Annotated[Text, Field(min_length=1, max_length=500)]
    environment: Environment
    tenant_id: Annotated[int, Field(gt=0, le=BIGINT_MAX)]
    client_id: Annotated[Text, Field(min_length=1, max_length=500)]
    client_secret: SecretStr
    app_key: SecretStr | None = None
    schedule_enabled: bool = True


class CredentialUpdate(_Request):
    """`stsyncctl credentials update`: only what is given changes."""

    company_name: Annotated[Text, Field(min_length=1, max_length=500)] | None = None
    client_id: Annotated[Text, Field(min_length=1, max_length=500)] | None = None
    client_secret: SecretStr | None = None
    app_key: SecretStr | None = None
    clear_app_key: bool = False
    schedule_enabled: bool | None = None


class CredentialsQuery(_Request):
    """Filters of `GET /v1/credentials`."""

    environment: Environment | None = None
    company_id: CompanyId | None = None


class DeadLettersQuery(_Request):
    """Filters of `stsyncctl dead-letters`: open ones only unless `include_resolved`."""

    credential_id: uuid.UUID | None = None
    company_id: CompanyId | None = None
    environment: Environment | None = None
    data_type: DataType | None = None
    include_resolved: bool = False
    limit: Annotated[int, Field(ge=1, le=DEAD_LETTERS_LIMIT_MAX)] = STATUS_LIMIT_DEFAULT
