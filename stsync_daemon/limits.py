"""Bounds and defaults that the config, the control protocol and the CLI must agree on.

Declared once here so that a change reaches `stsyncd.toml` validation, the socket's request
validation and `stsyncctl --help` together.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

MAX_CONCURRENT_MIN = 1
MAX_CONCURRENT_MAX = 1000
MAX_CONCURRENT_DEFAULT = 3  # syncs in flight per run
MAX_CONCURRENT_TOTAL_DEFAULT = 10  # syncs in flight in the whole daemon
SYNC_TIMEOUT_DEFAULT = 3600.0  # seconds, per sync
RETRY_MAX_AGE_HOURS_DEFAULT = 24.0
RETRY_MAX_AGE_HOURS_MAX = 24 * 366
RETRY_MAX_RETRIES_DEFAULT = 10
STATUS_LIMIT_DEFAULT = 50
STATUS_LIMIT_MAX = 100_000
RUNS_LIMIT_DEFAULT = 20  # `stsyncctl runs` and `GET /v1/runs` without a limit
RUNS_LIMIT_MAX = 10_000  # the server answers at most this many runs
DEAD_LETTERS_LIMIT_MAX = 10_000
BIGINT_MAX = 2**63 - 1
BACKFILL_MIN_RECORDS_DEFAULT = 20_000  # a first sync this large reads the lists, pages in parallel
# List pages in flight per data type: 16 of 1,000 records read 16,000 a second at 1 s per request
# (32 requests/s for a tenant's two data types, under ServiceTitan's 60); bench/README.md, Backfill.
BACKFILL_CONCURRENCY_DEFAULT = 16
BACKFILL_PAGE_SIZE_MAX = 5000  # the list endpoints' largest pageSize
# Records per list page by default: 5,000 invoices are a 67 MB decoded page and held the daemon at
# 280 MB; 1,000 keep it under 160 MB and convert faster (bench/README.md, "Backfill memory").
BACKFILL_PAGE_SIZE_DEFAULT = 1000
EXPORT_PAGE_RECORDS = 500  # what one export page holds (ServiceTitan's size, not ours to set)
ID_PREFIX_MIN = 4  # hex digits of an id prefix (`credentials show 3f2b`), as git's shortest

# The validated types, for pydantic models (config and protocol alike).
Concurrency = Annotated[int, Field(ge=MAX_CONCURRENT_MIN, le=MAX_CONCURRENT_MAX)]
Seconds = Annotated[float, Field(gt=0)]


def _storable(value: str) -> str:
    """PostgreSQL text holds neither NUL nor lone surrogates: refuse them here, not as a 503."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


# Text that reaches PostgreSQL (stored, or compared in a filter).
Text = Annotated[str, AfterValidator(_storable)]
CompanyId = Annotated[str, Field(max_length=200), AfterValidator(_storable)]
