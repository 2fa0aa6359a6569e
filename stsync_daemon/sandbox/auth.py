"""OAuth client credentials as ServiceTitan's identity server answers them, with JWT-shaped tokens.

Tokens are signed with a key made at start, so a token from another sandbox run is simply invalid;
they carry the environment, client and tenant, and are checked against revocations on every call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import secrets
import time
from dataclasses import dataclass

import orjson

from ..enums import Environment

SCOPE = "tn.crm.customers:r tn.acc.invoices:r"
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()


@dataclass
class Credential:
    """A client id/secret pair connecting the app to one tenant in one environment."""

    environment: Environment
    client_id: str
    client_secret: str
    tenant_id: int
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified access token says."""

    environment: Environment
    client_id: str
    tenant_id: int
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Issues and verifies access tokens."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self.credentials: dict[tuple[Environment, str], Credential] = {}
        self._key = secrets.token_bytes(32)
        self._serial = itertools.count(1)
        self._verified: dict[str, Claims] = {}

    def add(self, credential: Credential) -> None:
        """Connect a client to its tenant."""
        self.credentials[(credential.environment, credential.client_id)] = credential

    def issue(
        self, environment: Environment, client_id: str, client_secret: str
    ) -> Credential | None:
        """The credential if id and secret match and it is not revoked, else None."""
        credential = self.credentials.get((environment, client_id))
        if credential is None or credential.revoked:
            return None
        if not hmac.compare_digest(credential.client_secret.encode(), client_secret.encode()):
            return None
        return credential

    def token_for(self, credential: Credential) -> str:
        """A new signed token for a credential."""
        now = time.time()
        payload = {
            "iss": f"sandbox/{credential.environment}",
            "client_id": credential.client_id,
            "tenant": credential.tenant_id,
            "env": str(credential.environment),
            "scope": SCOPE,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": f"{next(self._serial):x}",
        }
        signing_input = f"{_HEADER}.{_b64(orjson.dumps(payload))}"
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    def verify(self, environment: Environment, token: str) -> Claims | None:
        """The claims of a valid, unexpired, unrevoked token of this environment, else None."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            if claims is None:
                return None
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[token] = claims
        if claims.environment is not environment or claims.expires_at <= time.time():
            return None
        credential = self.credentials.get((claims.environment, claims.client_id))
        if credential is None or credential.revoked:
            return None
        return claims

    def _decode(self, token: str) -> Claims | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        signing_input = f"{parts[0]}.{parts[1]}"
        expected = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        try:
            signature = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
            if not hmac.compare_digest(signature, expected):
                return None
            payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            return Claims(
                Environment(payload["env"]),
                str(payload["client_id"]),
                int(payload["tenant"]),
                float(payload["exp"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
