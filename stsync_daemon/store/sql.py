"""Loads the named blocks of the store's `.sql` files: SQL stays SQL; call sites name what they run.

Each store module loads its own file (`credentials.sql` for `credentials.py`, ...). Every block
starts with `-- name: <name>` and then a `--` line that says what it is for.
"""

from __future__ import annotations

import re
import uuid
from importlib import resources
from typing import Any

from ..errors import AmbiguousIdError, NotFoundError
from ..requests import id_bounds, is_whole_id

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


async def resolve_id(
    db: Any, query: str, ref: str, noun: str, plural: str | None = None
) -> uuid.UUID:
    """The one id of a `noun` that `ref` (a whole id or a prefix, see `requests.IdRef`) stands for.

    `query` takes the lowest and highest id the prefix covers and answers how many ids lie between
    (`n`) and one of them (`id`): a range scan of the primary key, however long the table.
    """
    low, high = id_bounds(ref)
    row = await db.fetchrow(query, low, high)
    found = int(row["n"]) if row is not None else 0
    if found == 0:
        if is_whole_id(ref):
            raise NotFoundError(f"no {noun} with id {ref}")
        raise NotFoundError(f"no {noun} id starts with {ref}")
    if found > 1:
        raise AmbiguousIdError(
            f"id prefix {ref} is ambiguous: {found} {plural or noun + 's'} match; "
            "give more of its digits"
        )
    result: uuid.UUID = row["id"]
    return result
