"""The metrics hook: the client reports what happened, the metrics module decides what to count."""

from __future__ import annotations

from typing import Protocol

from ..enums import Environment


class ClientObserver(Protocol):
    """Receives one call per request, wait, token fetch and retry; labels are small closed sets."""

    def request_finished(
        self, environment: Environment, endpoint: str, status: int | None, seconds: float
    ) -> None:
        """An HTTP exchange ended; `status` is None on a network error."""

    def rate_limit_waited(self, environment: Environment, seconds: float, reason: str) -> None:
        """A request waited: `reason` is "proactive" (our limiter) or "429" (ServiceTitan asked)."""

    def token_refreshed(self, environment: Environment, outcome: str) -> None:
        """A token fetch ended: `outcome` is "ok" or "error"."""

    def retried(self, environment: Environment, reason: str) -> None:
        """A request is repeated: `reason` is "429", "5xx", "409", "network" or "401"."""


class NullObserver:
    """Ignores everything: the default when no metrics are wanted."""

    def request_finished(
        self, environment: Environment, endpoint: str, status: int | None, seconds: float
    ) -> None:
        """Ignored."""

    def rate_limit_waited(self, environment: Environment, seconds: float, reason: str) -> None:
        """Ignored."""

    def token_refreshed(self, environment: Environment, outcome: str) -> None:
        """Ignored."""

    def retried(self, environment: Environment, reason: str) -> None:
        """Ignored."""
