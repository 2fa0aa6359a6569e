"""Closed vocabularies shared unchanged by the database, metrics, control protocol and CLI."""

from __future__ import annotations

from enum import StrEnum


class Environment(StrEnum):
    """A ServiceTitan environment: each has its own auth and API base and its own credentials."""

    INTEGRATION = "integration"
    PRODUCTION = "production"


class DataType(StrEnum):
    """What a sync copies."""

    CUSTOMERS = "customers"
    INVOICES = "invoices"


class DataTypeFilter(StrEnum):
    """A data type as operators select it: one, or both."""

    CUSTOMERS = "customers"
    INVOICES = "invoices"
    BOTH = "both"

    def expand(self) -> tuple[DataType, ...]:
        """The concrete data types this filter selects."""
        if self is DataTypeFilter.BOTH:
            return (DataType.CUSTOMERS, DataType.INVOICES)
        return (DataType(self.value),)


class SyncStatus(StrEnum):
    """Life cycle of one sync log row."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"

    @property
    def is_failure(self) -> bool:
        """Statuses a retry may pick up."""
        return self in (SyncStatus.FAILED, SyncStatus.TIMED_OUT, SyncStatus.INTERRUPTED)


class Trigger(StrEnum):
    """Who asked for a sync."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"
    RETRY = "retry"


class SyncMode(StrEnum):
    """Incremental resumes from the cursor; full restarts the export from the beginning."""

    INCREMENTAL = "incremental"
    FULL = "full"


class ErrorCategory(StrEnum):
    """Why a sync failed, decided from the exception class, never from message text."""

    AUTH = "auth"
    API = "api"
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    NETWORK = "network"
    DATABASE = "database"
    VALIDATION = "validation"
    CONFIGURATION = "configuration"  # the daemon's own setup (secrets key, app key), not a tenant's
    UNEXPECTED = "unexpected"


class CredentialStatus(StrEnum):
    """Whether scheduled runs use a credential."""

    ACTIVE = "active"
    ERROR = "error"
    DISABLED = "disabled"
    REMOVED = "removed"  # kept for its history (`credentials remove` without --purge)
