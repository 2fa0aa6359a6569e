"""Loads the named blocks of the store's `.sql` files: SQL stays SQL; call sites name what they run.

Each store module loads its own file (`credentials.sql` for `credentials.py`, ...). Every block
starts with `-- name: <name>` and then a `--` line that says what it is for.
"""

from __future__ import annotations

import re
from importlib import resources

SQL_FILES = ("credentials.sql", "syncs.sql", "records.sql", "runs.sql")


def load(filename: str) -> dict[str, str]:
    """The named blocks of one file; a block without its description line is a bug."""
    text = resources.files(__package__).joinpath(filename).read_text()
    blocks = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    queries: dict[str, str] = {}
    for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
        body = body.strip()
        if name in queries:
            raise RuntimeError(f"{filename}: query {name!r} is defined twice")
        if not body.startswith("-- "):
            raise RuntimeError(f"{filename}: query {name!r} does not start with its description")
        queries[name] = body
    return queries
