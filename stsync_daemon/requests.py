"""What operators ask of the daemon: validated, frozen requests shared by the control channel,
the CLI and the schedules (which build the same requests as `stsyncctl` does)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
)

from .enums import CredentialStatus, DataType, DataTypeFilter, Environment
from .limits import (
    BIGINT_MAX,
    DEAD_LETTERS_LIMIT_MAX,
    ID_PREFIX_MIN,
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


def id_ref(value: str) -> str:
    """A whole id or a unique prefix of one, as git takes them: at least `ID_PREFIX_MIN` hex digits,
    dashes optional. Returned lower-case, dashes dropped (whole ids in their canonical form)."""
    text = value.strip().lower()
    digits = text.replace("-", "")
    # Dashes only where a UUID has them (a prefix copied from a whole id), never leading.
    dashes = {i for i, c in enumerate(text) if c == "-"}
    misplaced = dashes - {8, 13, 18, 23}
    if (
        len(digits) < ID_PREFIX_MIN
        or len(digits) > 32
        or digits.strip("0123456789abcdef")
        or misplaced
    ):
        raise ValueError(
            f"must be an id or at least {ID_PREFIX_MIN} of its first hex digits "
            "(like 3f2b8c1e-0d4a-4e5f-9a7b-1c2d3e4f5a6b, or 3f2b)"
        )
    return str(uuid.UUID(digits)) if len(digits) == 32 else digits


def id_bounds(ref: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The first and last id an `IdRef` can stand for: a range the primary key's index answers."""
    digits = ref.replace("-", "")
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def is_whole_id(ref: str) -> bool:
    """Whether an `IdRef` is a whole id rather than a prefix."""
    return len(ref.replace("-", "")) == 32


def _id_text(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


# An id as operators give it: whole, or a unique prefix the daemon resolves (`id_ref`).
IdRef = Annotated[str, BeforeValidator(_id_text), AfterValidator(id_ref)]


class _Request(BaseModel):
    # No infinities or NaN: JSON cannot carry them, and query strings must not smuggle them in.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class StatusQuery(_Request):
    """Filters of `stsyncctl status`; `failed_only` means every status a retry picks up."""

    company_id: CompanyId | None = None
    run_id: IdRef | None = None
    environment: Environment | None = None
    data_type: DataType | None = None
    running_only: bool = False
    failed_only: bool = False
    last_24h: bool = False
    since: AwareDatetime | None = None
    limit: Annotated[int, Field(ge=1, le=STATUS_LIMIT_MAX)] = STATUS_LIMIT_DEFAULT


class ProcessRequest(_Request):
    """`stsyncctl process`: run syncs now (or show the plan)."""

    environment: Environment | None = None
    company_id: CompanyId | None = None
    credential_id: IdRef | None = None
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
    """Filters of `stsyncctl credentials list`."""

    environment: Environment | None = None
    company_id: CompanyId | None = None
    status: CredentialStatus | None = None


class DeadLettersQuery(_Request):
    """Filters of `stsyncctl dead-letters`: open ones only unless `include_resolved`."""

    credential_id: IdRef | None = None
    company_id: CompanyId | None = None
    environment: Environment | None = None
    data_type: DataType | None = None
    include_resolved: bool = False
    limit: Annotated[int, Field(ge=1, le=DEAD_LETTERS_LIMIT_MAX)] = STATUS_LIMIT_DEFAULT
