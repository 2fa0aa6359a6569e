"""Loads the named blocks of `queries.sql` once: SQL stays SQL; call sites name what they run."""

from __future__ import annotations

import re
from importlib import resources


def _load() -> dict[str, str]:
    queries: dict[str, str] = {}
    for filename in ("queries.sql", "cluster.sql"):
        text = resources.files(__package__).joinpath(filename).read_text()
        blocks = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            if name in queries:
                raise RuntimeError(f"query {name!r} is defined twice")
            queries[name] = body.strip()
    return queries


QUERIES: dict[str, str] = _load()
