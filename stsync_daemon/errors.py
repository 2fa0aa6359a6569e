"""One exception root; transient and permanent branches drive retries and the sync log's category.

Messages are for operators: actionable, and never carrying a secret or a token.
"""

from __future__ import annotations

from .enums import ErrorCategory


class StsyncError(Exception):
    """Root of every error stsync raises on purpose."""

    category: ErrorCategory = ErrorCategory.UNEXPECTED
    transient: bool = False


class TransientError(StsyncError):
    """Worth retrying later: the same call may succeed."""

    transient = True


class PermanentError(StsyncError):
    """Retrying the same call will fail the same way until someone fixes something."""


class ConfigurationError(PermanentError):
    """The daemon's own setup is wrong, not one tenant's: no credential is to blame for it.

    `subject` names what to fix (a stable key: health reports one problem per subject).
    """

    category = ErrorCategory.CONFIGURATION
    subject: str = "configuration"


class ConfigError(ConfigurationError):
    """The configuration is invalid; the message names the key and the problem."""


class InvalidCredentialsError(PermanentError):
    """ServiceTitan rejected the client id/secret or the tenant connection: the credential needs fixing."""

    category = ErrorCategory.AUTH


class ApiError(StsyncError):
    """ServiceTitan answered with an error status."""

    category = ErrorCategory.API

    def __init__(
        self,
        message: str,
        *,
        status: int,
        trace_id: str | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.trace_id = trace_id
        self.transient = transient


class RateLimitError(TransientError):
    """Still rate limited after every retry allowed."""

    category = ErrorCategory.RATE_LIMIT


class NetworkError(TransientError):
    """The connection failed, timed out or was cut mid-response."""

    category = ErrorCategory.NETWORK


class DatabaseError(TransientError):
    """PostgreSQL failed or went away."""

    category = ErrorCategory.DATABASE


class SyncTimeoutError(TransientError):
    """A sync ran past its time limit; what it committed stays."""

    category = ErrorCategory.TIMEOUT


class ValidationFailure(PermanentError):
    """A record or response does not have the shape the sync depends on."""

    category = ErrorCategory.VALIDATION


class SecretsError(ConfigurationError):
    """The secrets key is missing or does not decrypt a stored secret."""

    subject = "secrets_key"


class SchemaTooNewError(ConfigurationError):
    """The database was migrated by a newer stsyncd than this one: running on it is refused."""

    subject = "schema"


class AppKeyError(ConfigurationError):
    """ServiceTitan refuses the app key the daemon is configured with (or none is configured)."""

    subject = "app_key"


class NotFoundError(PermanentError):
    """An id given by an operator does not exist."""


class AmbiguousIdError(PermanentError):
    """An id prefix an operator gave matches more than one thing: more of its digits are needed."""


class ConflictError(PermanentError):
    """The request conflicts with the current state (e.g. a sync already running)."""
