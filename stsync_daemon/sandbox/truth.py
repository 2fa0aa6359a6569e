"""The ground-truth digest: one number that proves a copy holds exactly the records the API serves.

The sync's tests compute the same digest from PostgreSQL and compare it with the sandbox's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

_MOD = 1 << 64


def row_hash(record_id: int, modified_on: str, active: bool) -> int:
    """First 8 bytes (big-endian) of sha256 over `"{id}|{modifiedOn}|{true|false}"` in UTF-8."""
    text = f"{record_id}|{modified_on}|{'true' if active else 'false'}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def combine(hashes: Iterable[int]) -> int:
    """Order-independent sum of row hashes modulo 2**64."""
    return sum(hashes) % _MOD


def format_digest(value: int) -> str:
    """16 lowercase hex digits, zero-padded."""
    return f"{value % _MOD:016x}"


def truth_digest(rows: Iterable[tuple[int, str, bool]]) -> str:
    """Digest of `(id, modifiedOn, active)` rows, independent of their order.

    Formula: ``sum(int.from_bytes(sha256(f"{id}|{modifiedOn}|{active}".encode())[:8], "big")) mod 2**64``
    formatted as 16 lowercase hex digits, where `modifiedOn` is the string exactly as served (e.g.
    ``2021-07-19T20:35:38.2876004Z``, i.e. `payload->>'modifiedOn'`) and `active` is ``true``/``false``.
    A sum (not XOR) so that a duplicated row changes the digest; the empty set digests to
    ``0000000000000000``. The same in PostgreSQL (≥ 11), for a table with `id`, `active`, `payload`::

        WITH h AS (
            SELECT ('x' || left(encode(sha256(convert_to(
                       id::text || '|' || (payload->>'modifiedOn') || '|' || active::text,
                       'UTF8')), 'hex'), 16))::bit(64)::bigint::numeric AS s
            FROM customers WHERE tenant_id = $1
        ), t AS (
            SELECT ((coalesce(sum(s), 0) % 18446744073709551616) + 18446744073709551616)
                   % 18446744073709551616 AS r FROM h
        )
        SELECT lpad(to_hex((CASE WHEN r >= 9223372036854775808
                                 THEN r - 18446744073709551616 ELSE r END)::bigint), 16, '0')
        FROM t
    """
    return format_digest(combine(row_hash(i, m, a) for i, m, a in rows))
