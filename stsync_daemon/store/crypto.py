"""Client secrets encrypted at rest with Fernet (AES-128-CBC + HMAC) from `cryptography`.

The key file holds one or more Fernet keys, one per line: the first encrypts, all decrypt.
`stsyncd rotate-key` re-encrypts every stored secret under a new key file's first key. A key file
that group or others may access is refused: it unlocks every tenant's client secret.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

from ..errors import SecretsError


def generate_key() -> str:
    """A new random key, in the format the key file expects."""
    return Fernet.generate_key().decode()


class SecretCipher:
    """Encrypts and decrypts stored secrets; never exposes them in repr or errors."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretsError("the secrets key file holds no key")
        try:
            self._fernets = [Fernet(k) for k in keys]
        except ValueError:
            raise SecretsError(
                "the secrets key file is not a valid key "
                "(generate one with `stsyncd generate-key PATH`)"
            ) from None
        self._fernet = MultiFernet(self._fernets)

    @classmethod
    def from_file(cls, path: Path | None) -> SecretCipher:
        """Load the key file named by `[secrets] key_file`."""
        if path is None:
            raise SecretsError(
                "secrets.key_file is not set: generate a key with `stsyncd generate-key PATH` "
                "and point [secrets] key_file (or STSYNC_SECRETS__KEY_FILE) at it"
            )
        try:
            check_key_file_mode(path)
            lines = path.read_text().split()
        except OSError as exc:
            raise SecretsError(f"cannot read secrets key file {path}: {exc.strerror}") from None
        return cls([line.encode() for line in lines if line])

    def is_primary(self, token: bytes) -> bool:
        """Whether `token` is encrypted under this cipher's first key (rotation has nothing to do)."""
        try:
            self._fernets[0].decrypt(bytes(token))
        except InvalidToken:
            return False
        return True

    def reencrypt(self, token: bytes, old: SecretCipher) -> bytes:
        """`token`, readable with this cipher's keys or `old`'s, encrypted under this one's first key."""
        try:
            return MultiFernet([*self._fernets, *old._fernets]).rotate(bytes(token))
        except InvalidToken:
            raise SecretsError(
                "a stored secret decrypts with neither the current nor the new key"
            ) from None

    def __repr__(self) -> str:
        return "SecretCipher(<keys hidden>)"

    def encrypt(self, secret: SecretStr) -> bytes:
        """Encrypt with the primary key."""
        return self._fernet.encrypt(secret.get_secret_value().encode())

    def decrypt(self, token: bytes) -> SecretStr:
        """Decrypt with any of the keys."""
        try:
            return SecretStr(self._fernet.decrypt(bytes(token)).decode())
        except InvalidToken:
            raise SecretsError(
                "a stored client secret cannot be decrypted with the configured key file: "
                "restore the key it was saved with, or re-enter the secret"
            ) from None


def check_key_file_mode(path: Path) -> None:
    """Refuse a key file that group or others may access (OSError when it cannot be examined)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise SecretsError(
            f"secrets key file {path} has mode {mode:04o}: group and others must have no access "
            f"(chmod 600 {path})"
        )
