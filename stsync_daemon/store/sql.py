"""Loads the named blocks of `queries.sql` once: SQL stays SQL; call sites name what they run."""

from __future__ import annotations

import re
from importlib import resources


def _load() -> dict[str, str]:
    text = resources.files(__package__).joinpath("queries.sql").read_text()
    blocks = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    return {name: body.strip() for name, body in zip(blocks[1::2], blocks[2::2], strict=True)}


QUERIES: dict[str, str] = _load()
