"""Rotating the secrets key: every stored secret re-encrypted in one transaction, safe to re-run;
key files that others may read are refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from stsync_daemon.enums import Environment
from stsync_daemon.errors import SecretsError
from stsync_daemon.store.credentials import CredentialStore, NewCredential
from stsync_daemon.store.crypto import SecretCipher, generate_key
from stsync_daemon.store.db import create_pool
from tests.test_stsyncd import stsyncd

SECRETS = {501: "cs.alpha-secret", 502: "cs.bravo-secret"}
APP_KEY = "ak1.own-app-key"


def key_file(path: Path, mode: int = 0o600) -> Path:
    path.write_text(generate_key() + "\n")
    path.chmod(mode)
    return path


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def add_credentials(pool: asyncpg.Pool, cipher: SecretCipher) -> CredentialStore:
    store = CredentialStore(pool, cipher)
    for tenant_id, secret in SECRETS.items():
        await store.add(
            NewCredential(
                company_id=f"c{tenant_id}",
                company_name=f"Company {tenant_id}",
                environment=Environment.PRODUCTION,
                tenant_id=tenant_id,
                client_id=f"cid.{tenant_id}",
                client_secret=SecretStr(secret),
                app_key=SecretStr(APP_KEY) if tenant_id == 501 else None,
            )
        )
    return store


async def decrypted(pool: asyncpg.Pool, cipher: SecretCipher) -> dict[int, tuple[str, str]]:
    store = CredentialStore(pool, cipher)
    out = {}
    for credential in await store.list():
        access = await store.access(credential, SecretStr("ak1.default"))
        out[credential.tenant_id] = (
            access.client_secret.get_secret_value(),
            access.app_key.get_secret_value(),
        )
    return out


async def stored(pool: asyncpg.Pool) -> list[tuple[bytes, bytes | None]]:
    rows = await pool.fetch(
        "SELECT client_secret_encrypted, app_key_encrypted FROM stsync.credentials ORDER BY id"
    )
    return [(bytes(r[0]), r[1] and bytes(r[1])) for r in rows]


def config(tmp_path: Path, dsn: str, key: Path) -> str:
    path = tmp_path / f"stsync-{key.stem}.toml"
    path.write_text(f'[database]\ndsn = "{dsn}"\n[secrets]\nkey_file = "{key}"\n')
    return str(path)


async def test_rotate_key_reencrypts_every_secret_once(
    tmp_path: Path, database_dsn: str, pool: asyncpg.Pool
) -> None:
    old = key_file(tmp_path / "old.key")
    new = key_file(tmp_path / "new.key")
    await add_credentials(pool, SecretCipher.from_file(old))
    expected = {501: (SECRETS[501], APP_KEY), 502: (SECRETS[502], "ak1.default")}

    out = stsyncd("rotate-key", str(new), "--config", config(tmp_path, database_dsn, old))
    assert out.returncode == 0, out.stderr
    assert "re-encrypted 3 secrets of 2 credentials" in out.stdout, out.stdout
    assert "(0 already were)" in out.stdout
    assert not any(secret in out.stdout + out.stderr for secret in [*SECRETS.values(), APP_KEY])
    assert await decrypted(pool, SecretCipher.from_file(new)) == expected
    with pytest.raises(SecretsError):  # the old key no longer reads them
        await decrypted(pool, SecretCipher.from_file(old))

    # Re-run (a crash, a doubt, or the config already swapped): nothing changes.
    before = await stored(pool)
    for key in (old, new):
        again = stsyncd("rotate-key", str(new), "--config", config(tmp_path, database_dsn, key))
        assert again.returncode == 0, again.stderr
        assert "re-encrypted 0 secrets of 2 credentials" in again.stdout
        assert "(3 already were)" in again.stdout
    assert await stored(pool) == before


async def test_an_unreadable_secret_changes_nothing(
    tmp_path: Path, database_dsn: str, pool: asyncpg.Pool
) -> None:
    old = key_file(tmp_path / "old.key")
    new = key_file(tmp_path / "new.key")
    await add_credentials(pool, SecretCipher.from_file(old))
    stranger = SecretCipher([generate_key().encode()])
    odd = await pool.fetchval(
        "UPDATE stsync.credentials SET client_secret_encrypted = $1 "
        "WHERE tenant_id = 502 RETURNING id",
        stranger.encrypt(SecretStr("cs.from-elsewhere")),
    )
    before = await stored(pool)
    out = stsyncd("rotate-key", str(new), "--config", config(tmp_path, database_dsn, old))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and str(odd) in out.stderr, out.stderr
    assert "nothing was changed" in out.stderr and "Traceback" not in out.stderr
    assert await stored(pool) == before


async def test_key_files_others_can_read_are_refused(tmp_path: Path, database_dsn: str) -> None:
    good = key_file(tmp_path / "good.key")
    loose = key_file(tmp_path / "loose.key", 0o644)
    group = key_file(tmp_path / "group.key", 0o640)
    cases = [
        (["rotate-key", str(loose), "--config", config(tmp_path, database_dsn, good)], loose),
        (["rotate-key", str(good), "--config", config(tmp_path, database_dsn, group)], group),
        (["run", "--config", config(tmp_path, database_dsn, loose)], loose),
    ]
    for command, culprit in cases:
        out = stsyncd(*command)
        assert out.returncode == 1, (command, out)
        errors = [line for line in out.stderr.splitlines() if line.startswith("stsyncd: ")]
        assert len(errors) == 1, out.stderr
        mode = f"{culprit.stat().st_mode & 0o777:04o}"
        assert str(culprit) in errors[0] and mode in errors[0], errors[0]
        assert f"chmod 600 {culprit}" in errors[0]
