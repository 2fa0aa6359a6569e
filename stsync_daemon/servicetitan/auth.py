"""Access tokens: cached per credential, refreshed before expiry, fetched once however many ask."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .models import CredentialAccess
from .ratelimit import Clock

# Returns the token and its lifetime in seconds.
TokenFetcher = Callable[[CredentialAccess], Awaitable[tuple[str, float]]]


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and when to replace it; the value is kept out of repr."""

    value: str = field(repr=False)
    refresh_at: float
    expires_at: float


class TokenProvider:
    """One credential's token (ServiceTitan tokens last 15 minutes and come with no refresh token).

    Concurrent callers share one in-flight fetch (single-flight), so 100 requests starting together
    cost one token request, and a rejected secret fails them all with the same error.
    """

    def __init__(self, fetch: TokenFetcher, *, clock: Clock, margin_seconds: float) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin = margin_seconds
        self._token: AccessToken | None = None
        self._inflight: asyncio.Task[AccessToken] | None = None

    def __repr__(self) -> str:
        return f"<TokenProvider cached={self._token is not None}>"

    @property
    def cached(self) -> AccessToken | None:
        """The current token, if any (for tests and diagnostics)."""
        return self._token

    async def get(self, access: CredentialAccess, *, fresh: bool = False) -> str:
        """A valid token; `fresh` forces a new fetch (to test a secret) unless one is under way."""
        token = self._token
        if not fresh and token is not None and self._clock() < token.refresh_at:
            return token.value
        task = self._inflight
        if task is None:
            task = asyncio.ensure_future(self._fetch_and_store(access))
            task.add_done_callback(_consume)
            self._inflight = task
        # shield: one caller's cancellation must not abort the fetch the others are waiting for.
        return (await asyncio.shield(task)).value

    def invalidate(self, value: str) -> None:
        """Forget `value` after a 401; a token already replaced by another caller is kept."""
        if self._token is not None and self._token.value == value:
            self._token = None

    def cancel(self) -> None:
        """Stop a fetch under way (client closing)."""
        if self._inflight is not None:
            self._inflight.cancel()

    async def _fetch_and_store(self, access: CredentialAccess) -> AccessToken:
        try:
            started = self._clock()
            value, lifetime = await self._fetch(access)
            # Short-lived tokens (the sandbox's) must stay usable: keep at least half the life.
            margin = min(self._margin, lifetime / 2)
            token = AccessToken(
                value=value, refresh_at=started + lifetime - margin, expires_at=started + lifetime
            )
            self._token = token
            return token
        finally:
            self._inflight = None


def _consume(task: asyncio.Task[AccessToken]) -> None:
    """Mark the outcome as retrieved, so an error nobody awaited is not reported as lost."""
    if not task.cancelled():
        task.exception()
