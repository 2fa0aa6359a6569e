"""Companies and their per-tenant ServiceTitan credentials, secrets encrypted at rest."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import SecretStr

from ..enums import CredentialStatus, DataType, Environment
from ..errors import AppKeyError, ConflictError, NotFoundError, SecretsError
from ..servicetitan import CredentialAccess
from ..views import CredentialView, iso
from .crypto import SecretCipher
from .sql import load, resolve_id

_SQL = load("credentials.sql")


@dataclass(frozen=True)
class Credential:
    """A stored credential as operators see it: no secret in here."""

    id: uuid.UUID
    company_id: str
    company_name: str
    environment: Environment
    tenant_id: int
    client_id: str
    status: CredentialStatus
    last_error: str | None
    last_error_at: datetime | None
    schedule_enabled: bool
    has_app_key: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Credential:
        return cls(
            id=row["id"],
            company_id=row["company_id"],
            company_name=row["company_name"],
            environment=Environment(row["environment"]),
            tenant_id=row["tenant_id"],
            client_id=row["client_id"],
            status=CredentialStatus(row["status"]),
            last_error=row["last_error"],
            last_error_at=row["last_error_at"],
            schedule_enabled=row["schedule_enabled"],
            has_app_key=row["has_app_key"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)
class NewCredential:
    """What `credentials add` provides."""

    company_id: str
    company_name: str
    environment: Environment
    tenant_id: int
    client_id: str
    client_secret: SecretStr
    app_key: SecretStr | None = None
    schedule_enabled: bool = True


@dataclass(frozen=True)
class CoverageRule:
    """What one enabled schedule syncs: None matches any environment, company or credential."""

    environment: Environment | None
    company_id: str | None
    credential_id: str | None
    data_type: DataType


@dataclass(frozen=True)
class Coverage:
    """Which credentials and data types some enabled schedule syncs; the rest never alert."""

    rules: tuple[CoverageRule, ...]

    def args(self) -> tuple[builtins.list[str | None], ...]:
        """The rules as the four parallel arrays the queries unnest."""
        return (
            [r.environment.value if r.environment else None for r in self.rules],
            [r.company_id for r in self.rules],
            [r.credential_id for r in self.rules],
            [r.data_type.value for r in self.rules],
        )


class CredentialStore:
    """CRUD over credentials; the only place secrets are encrypted or decrypted."""

    def __init__(self, pool: asyncpg.Pool, cipher: SecretCipher | None) -> None:
        self._pool = pool
        self._cipher = cipher

    def _require_cipher(self) -> SecretCipher:
        if self._cipher is None:
            raise SecretsError(
                "no secrets key is configured: set [secrets] key_file "
                "(generate one with `stsyncd generate-key PATH`)"
            )
        return self._cipher

    async def add(self, new: NewCredential) -> Credential:
        cipher = self._require_cipher()
        credential_id = uuid.uuid4()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_SQL["upsert_company"], new.company_id, new.company_name)
            try:
                await conn.execute(
                    _SQL["insert_credential"],
                    credential_id,
                    new.company_id,
                    new.environment.value,
                    new.tenant_id,
                    new.client_id,
                    cipher.encrypt(new.client_secret),
                    cipher.encrypt(new.app_key) if new.app_key else None,
                    new.schedule_enabled,
                )
            except asyncpg.UniqueViolationError:
                raise ConflictError(
                    f"tenant {new.tenant_id} already has a {new.environment} credential: "
                    "update it instead (stsyncctl credentials update)"
                ) from None
        return await self.get(credential_id)

    async def list(
        self,
        *,
        environment: Environment | None = None,
        company_id: str | None = None,
        credential_id: uuid.UUID | None = None,
        status: CredentialStatus | None = None,
    ) -> list[Credential]:
        rows = await self._pool.fetch(
            _SQL["select_credentials"],
            environment.value if environment else None,
            company_id,
            credential_id,
            status.value if status else None,
        )
        return [Credential.from_row(r) for r in rows]

    async def resolve(self, ref: str) -> uuid.UUID:
        """The credential a whole id or a unique prefix of one stands for."""
        return await resolve_id(self._pool, _SQL["resolve_credential_id"], ref, "credential")

    async def get(self, credential_id: uuid.UUID) -> Credential:
        row = await self._pool.fetchrow(_SQL["select_credential"], credential_id)
        if row is None:
            raise NotFoundError(f"no credential with id {credential_id}")
        return Credential.from_row(row)

    async def update(
        self,
        credential_id: uuid.UUID,
        *,
        client_id: str | None = None,
        client_secret: SecretStr | None = None,
        app_key: SecretStr | None = None,
        clear_app_key: bool = False,
        schedule_enabled: bool | None = None,
        company_name: str | None = None,
    ) -> Credential:
        cipher = self._require_cipher() if (client_secret or app_key) else None
        async with self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                _SQL["update_credential"],
                credential_id,
                client_id,
                cipher.encrypt(client_secret) if cipher and client_secret else None,
                cipher.encrypt(app_key) if cipher and app_key else None,
                clear_app_key,
                schedule_enabled,
            )
            if found is None:
                await self._refuse_removed(credential_id, conn)
                raise NotFoundError(f"no credential with id {credential_id}")
            if company_name:
                # On this connection: holding one while waiting for another can starve a full pool.
                company_id = await conn.fetchval(_SQL["credential_company"], credential_id)
                await conn.execute(_SQL["upsert_company"], company_id, company_name)
        return await self.get(credential_id)

    async def set_status(
        self, credential_id: uuid.UUID, status: CredentialStatus, error: str | None = None
    ) -> None:
        found = await self._pool.fetchval(
            _SQL["set_credential_status"], credential_id, status.value, error
        )
        if found is None:
            await self._refuse_removed(credential_id)
            raise NotFoundError(f"no credential with id {credential_id}")

    async def remove(self, credential_id: uuid.UUID, *, purge: bool = False) -> None:
        """Out of service for good. Its history (sync log, cursors, dead letters) stays unless
        `purge`; either way its tenant may be added again."""
        if purge:
            found = await self._pool.fetchval(_SQL["delete_credential"], credential_id)
        else:
            found = await self._pool.fetchval(_SQL["remove_credential"], credential_id)
        if found is None:
            await self._refuse_removed(credential_id)
            raise NotFoundError(f"no credential with id {credential_id}")

    async def _refuse_removed(self, credential_id: uuid.UUID, conn: Any = None) -> None:
        """A change asked of a removed credential: say so, rather than "no such credential"."""
        db = conn if conn is not None else self._pool
        row = await db.fetchrow(_SQL["select_credential"], credential_id)
        if row is not None and row["status"] == CredentialStatus.REMOVED:
            raise ConflictError(
                f"credential {credential_id} was removed (its history is kept): add the tenant "
                "again with `stsyncctl credentials add`, or purge it with `credentials remove "
                "--purge`"
            )

    async def count_by_status(self) -> dict[CredentialStatus, int]:
        rows = await self._pool.fetch(_SQL["count_credentials_by_status"])
        counts = dict.fromkeys(CredentialStatus, 0)
        counts.update({CredentialStatus(r["status"]): r["n"] for r in rows})
        return counts

    async def last_success(
        self, credential_ids: builtins.list[uuid.UUID]
    ) -> dict[uuid.UUID, dict[str, datetime | None]]:
        """When each data type of the given credentials last synced successfully."""
        last: dict[uuid.UUID, dict[str, datetime | None]] = {}
        for r in await self._pool.fetch(_SQL["last_success"], credential_ids):
            last.setdefault(r["credential_id"], {})[r["data_type"]] = r["completed_at"]
        return last

    async def scheduled_by_status(self, coverage: Coverage) -> builtins.list[asyncpg.Record]:
        """(environment, status, n) of the credentials some enabled schedule syncs."""
        return await self._pool.fetch(_SQL["scheduled_credentials_by_status"], *coverage.args())

    async def freshness(
        self, coverage: Coverage, stale_after_seconds: float
    ) -> builtins.list[asyncpg.Record]:
        """(environment, data_type, scheduled, stale, oldest) of the scheduled pairs."""
        return await self._pool.fetch(
            _SQL["freshness_of_scheduled"], *coverage.args(), stale_after_seconds
        )

    async def scheduled_last_success(self, coverage: Coverage) -> builtins.list[asyncpg.Record]:
        """(credential_id, data_type, completed_at, company_id, environment) of scheduled pairs."""
        return await self._pool.fetch(_SQL["scheduled_last_success"], *coverage.args())

    async def access(
        self,
        credential: Credential,
        default_app_key: SecretStr | None,
        secrets: Mapping[str, Any] | None = None,
    ) -> CredentialAccess:
        """Decrypt what the ServiceTitan client needs for one credential.

        `secrets`: its encrypted columns when the caller has read them already.
        """
        cipher = self._require_cipher()
        row = secrets or await self._pool.fetchrow(_SQL["select_credential_secrets"], credential.id)
        if row is None or row["client_secret_encrypted"] is None:
            raise NotFoundError(f"no credential with id {credential.id}")
        app_key = (
            cipher.decrypt(row["app_key_encrypted"])
            if row["app_key_encrypted"] is not None
            else default_app_key
        )
        if app_key is None:
            raise AppKeyError(
                "no ServiceTitan app key: set [servicetitan] app_key or app_key_file, "
                "or give the credential its own with --app-key-file"
            )
        return CredentialAccess(
            credential_id=str(credential.id),
            environment=credential.environment,
            tenant_id=credential.tenant_id,
            client_id=credential.client_id,
            client_secret=cipher.decrypt(row["client_secret_encrypted"]),
            app_key=app_key,
            own_app_key=row["app_key_encrypted"] is not None,
        )


def credential_view(
    credential: Credential, last_success: dict[str, datetime | None] | None = None
) -> CredentialView:
    """A credential without any secret."""
    last = last_success or {}
    return {
        "id": str(credential.id),
        "company_id": credential.company_id,
        "company": credential.company_name,
        "environment": credential.environment.value,
        "tenant_id": credential.tenant_id,
        "client_id": credential.client_id,
        "status": credential.status.value,
        "last_error": credential.last_error,
        "last_error_at": iso(credential.last_error_at),
        "schedule_enabled": credential.schedule_enabled,
        "has_app_key": credential.has_app_key,
        "created_at": iso(credential.created_at) or "",
        "updated_at": iso(credential.updated_at) or "",
        "last_success": {dt.value: iso(last.get(dt.value)) for dt in DataType},
    }
