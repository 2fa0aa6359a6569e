"""What crosses the client's boundary: what it needs of a credential, what an export yields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from ..enums import Environment


@dataclass(frozen=True)
class CredentialAccess:
    """What the client needs of one stored credential; secrets stay `SecretStr`, hidden in repr."""

    credential_id: str
    environment: Environment
    tenant_id: int
    client_id: str
    client_secret: SecretStr
    app_key: SecretStr
    own_app_key: bool = False  # the credential's own app key rather than the daemon's

    @property
    def client_label(self) -> str:
        """The client id as shown to operators: long ids are shortened, enough to recognise them."""
        cid = self.client_id
        return cid if len(cid) <= 12 else cid[:8] + "…"

    def describe(self) -> str:
        """Who is talking to whom, for error messages: client id, tenant and environment."""
        env = self.environment.value
        return f"client id '{self.client_label}' for tenant {self.tenant_id} in {env}"


@dataclass(frozen=True, slots=True)
class UnreadableRecord:
    """A record of an otherwise readable page that could not be decoded, kept byte for byte."""

    raw: bytes
    reason: str
    record_id: str | None


@dataclass(frozen=True)
class ExportPage:
    """One page of an export, with the token to continue from (or of a list, with its number).

    `unreadable` holds the records JSON cannot decode (a lone surrogate escape, a number beyond
    double range); `records` the others.
    """

    records: list[dict[str, Any]]
    continue_from: str | None
    has_more: bool
    nbytes: int
    unreadable: tuple[UnreadableRecord, ...] = ()
    number: int | None = None  # a list page's number (backfill); None for an export page
