"""A faithful, fast local ServiceTitan API: the same auth, endpoints, paging, limits and faults.

Start it in-process with `async with Sandbox(config) as sb:` or as a process with `stsync-sandbox`.
"""

from __future__ import annotations

from .models import (
    Counters,
    EndpointKind,
    FaultKind,
    FaultRule,
    MutationResult,
    PoisonKind,
    SandboxConfig,
    TenantSpec,
    Truth,
)
from .server import Sandbox
from .truth import truth_digest

__all__ = [
    "Counters",
    "EndpointKind",
    "FaultKind",
    "FaultRule",
    "MutationResult",
    "PoisonKind",
    "Sandbox",
    "SandboxConfig",
    "TenantSpec",
    "Truth",
    "truth_digest",
]
