"""Seeded fault injection: each rule draws from its own `random.Random(seed)`, so runs replay."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..enums import DataType, Environment
from .models import EndpointKind, FaultKind, FaultRule


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do to one request: an injected failure (or None) and a delay in seconds."""

    fault: FaultKind | None = None
    delay: float = 0.0


NO_FAULT = Decision()


class FaultInjector:
    """Applies the current rules, in order; the first failure drawn wins, delays add up."""

    def __init__(self, rules: Sequence[FaultRule] = ()) -> None:
        self.set_rules(rules)

    def set_rules(self, rules: Sequence[FaultRule]) -> None:
        """Replace every rule; each restarts its random sequence from its seed."""
        self.rules = tuple(rules)
        self._rngs = [random.Random(rule.seed) for rule in self.rules]

    def decide(
        self,
        tenant_id: int,
        environment: Environment,
        data_type: DataType,
        endpoint: EndpointKind | None = None,
    ) -> Decision:
        """Draw the fate of one API request."""
        if not self.rules:
            return NO_FAULT
        fault: FaultKind | None = None
        delay = 0.0
        for rule, rng in zip(self.rules, self._rngs, strict=True):
            if (
                (rule.tenant_id is not None and rule.tenant_id != tenant_id)
                or (rule.environment is not None and rule.environment is not environment)
                or (rule.data_type is not None and rule.data_type is not data_type)
                or (rule.endpoint is not None and rule.endpoint is not endpoint)
            ):
                continue
            draw, jitter = rng.random(), rng.random()
            delay += (rule.latency_ms + rule.latency_jitter_ms * jitter) / 1000
            if fault is not None:
                continue
            edge = 0.0
            for share, kind in (
                (rule.rate_limit_share, FaultKind.RATE_LIMIT),
                (rule.server_error_share, FaultKind.SERVER_ERROR),
                (rule.maintenance_share, FaultKind.MAINTENANCE),
                (rule.drop_share, FaultKind.DROP),
                (rule.malformed_share, FaultKind.MALFORMED),
                (rule.repeat_token_share, FaultKind.REPEAT_TOKEN),
            ):
                edge += share
                if draw < edge:
                    fault = kind
                    break
        if fault is None and delay == 0.0:
            return NO_FAULT
        return Decision(fault, delay)
