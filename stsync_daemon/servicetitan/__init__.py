"""The ServiceTitan client: tokens, rate limits, retries, exports. Knows nothing of PostgreSQL."""

from __future__ import annotations

from .client import ServiceTitanClient, TenantClient
from .exceptions import ExportTokenInvalidError
from .models import CredentialAccess, ExportPage, UnreadableRecord
from .observer import ClientObserver, NullObserver

__all__ = [
    "ClientObserver",
    "CredentialAccess",
    "ExportPage",
    "ExportTokenInvalidError",
    "NullObserver",
    "ServiceTitanClient",
    "TenantClient",
    "UnreadableRecord",
]
