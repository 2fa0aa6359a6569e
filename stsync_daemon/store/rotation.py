"""Re-encrypting every stored secret under a new key (`stsyncd rotate-key`).

All credentials are locked and rewritten in one transaction: a failure leaves every secret as it
was, under the old key. A secret already under the new key is left alone, so re-running after a
crash or a mistake is safe and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SecretsError
from .crypto import SecretCipher

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Conn = asyncpg.Connection | PoolConnectionProxy[Any]

# -- lock every credential's encrypted secrets for the rewrite
_LOCK_SECRETS = """
SELECT id, client_secret_encrypted, app_key_encrypted
FROM stsync.credentials
ORDER BY id
FOR UPDATE
"""
# -- store one credential's re-encrypted secrets
_SAVE_SECRETS = """
UPDATE stsync.credentials
SET client_secret_encrypted = $2, app_key_encrypted = $3
WHERE id = $1
"""
# -- daemons that heartbeat still: they hold the old key in memory
_LIVE_INSTANCES = """
SELECT name, host, pid
FROM stsync.instances
WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1)
ORDER BY name
"""


@dataclass(frozen=True)
class RotationResult:
    """What `rotate_secrets` did: secrets rewritten, and those already under the new key."""

    credentials: int
    reencrypted: int
    already_new: int


async def rotate_secrets(conn: Conn, old: SecretCipher, new: SecretCipher) -> RotationResult:
    """Rewrite every client secret and app key under `new`'s first key, in one transaction."""
    credentials = reencrypted = already_new = 0
    async with conn.transaction():
        for row in await conn.fetch(_LOCK_SECRETS):
            credentials += 1
            tokens: list[bytes | None] = []
            changed = False
            for column in ("client_secret_encrypted", "app_key_encrypted"):
                token = row[column]
                if token is None or new.is_primary(token):
                    already_new += token is not None
                    tokens.append(token)
                    continue
                try:
                    tokens.append(new.reencrypt(token, old))
                except SecretsError:
                    raise SecretsError(
                        f"credential {row['id']}: its {column.removesuffix('_encrypted')} "
                        "decrypts with neither the current nor the new key; nothing was changed"
                    ) from None
                reencrypted += 1
                changed = True
            if changed:
                await conn.execute(_SAVE_SECRETS, row["id"], *tokens)
    return RotationResult(credentials, reencrypted, already_new)


async def live_instances(conn: Conn, lease_seconds: float) -> list[str]:
    """`name (host pid N)` of each daemon that still heartbeats."""
    rows = await conn.fetch(_LIVE_INSTANCES, lease_seconds)
    return [f"{r['name']} ({r['host']} pid {r['pid']})" for r in rows]
