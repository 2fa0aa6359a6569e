"""Turn ServiceTitan records into typed rows for the stage tables.

Only id, modifiedOn and active are required: a record without them becomes a dead letter, and so does
one PostgreSQL cannot store (a NUL character) or that could not be decoded at all. Every other typed
column is best effort (NULL when absent, malformed or out of the column's range); the payload keeps the
record as received.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from ..enums import DataType

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Rejected:
    """A record that cannot be stored as a row: kept as JSON text (`raw`) with the reason."""

    record_id: str | None
    reason: str
    raw: bytes
    jsonb_ok: bool = True  # whether PostgreSQL's jsonb accepts `raw` (kept queryable then)


class InvalidRecord(ValueError):
    """Raised by converters; the message becomes the dead letter's reason."""


def parse_timestamp(value: Any) -> datetime | None:
    """ServiceTitan timestamps: ISO 8601, up to 7 fractional digits, 'Z' or an offset."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# PostgreSQL's bigint and the largest exponents its numeric type (and asyncpg's encoder) accept.
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_NUMERIC_MAX_EXPONENT = 131_000
_NUMERIC_MIN_EXPONENT = -16_000
# orjson writes a NUL character as this escape; neither text nor jsonb can hold it.
_NUL_ESCAPE = b"\\u0000"


def _required_id(record: dict[str, Any]) -> int:
    value = record.get("id")
    if type(value) is not int or not 0 < value <= INT64_MAX:
        raise InvalidRecord(f"id must be a positive 64-bit integer, got {_clip(repr(value))}")
    return value


def _record_id(value: Any) -> str | None:
    """A rejected record's id as text (JSON-escaped when not an integer: it may hold a NUL)."""
    if value is None:
        return None
    if type(value) is int:
        return str(value)
    return _clip(orjson.dumps(value).decode(), 40)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _required_modified(record: dict[str, Any]) -> datetime:
    value = record.get("modifiedOn")
    parsed = parse_timestamp(value)
    if parsed is None:
        raise InvalidRecord(f"modifiedOn must be an ISO 8601 timestamp, got {_clip(repr(value))}")
    return parsed


def _required_active(record: dict[str, Any]) -> bool:
    value = record.get("active")
    if type(value) is not bool:
        raise InvalidRecord(f"active must be true or false, got {_clip(repr(value))}")
    return value


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(value) if isinstance(value, str) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not result.is_finite() or not (
        _NUMERIC_MIN_EXPONENT <= result.adjusted() <= _NUMERIC_MAX_EXPONENT
    ):
        return None
    return result


def _int(value: Any) -> int | None:
    return value if type(value) is int and INT64_MIN <= value <= INT64_MAX else None


def _float(value: Any) -> float | None:
    if type(value) in (int, float):
        return float(value)
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _ref_id(value: Any) -> int | None:
    return _int(value.get("id")) if isinstance(value, dict) else None


def _jsonb(record: dict[str, Any]) -> bytes:
    # Binary jsonb (version byte + JSON). The concatenation also trims orjson's output buffer, which
    # it does not shrink: kept as is, each small payload would hold about 8 KB.
    payload = b"\x01" + orjson.dumps(record)
    if _NUL_ESCAPE in payload:
        raise InvalidRecord(
            "holds a NUL character (\\u0000), which PostgreSQL cannot store in text or jsonb"
        )
    return payload


def customer_row(record: dict[str, Any]) -> Row:
    """A row for `stsync_stage_customers`."""
    address = record.get("address")
    if not isinstance(address, dict):
        address = {}
    return (
        _required_id(record),
        _text(record.get("name")),
        _text(record.get("type")),
        _required_active(record),
        _decimal(record.get("balance")),
        _text(address.get("street")),
        _text(address.get("unit")),
        _text(address.get("city")),
        _text(address.get("state")),
        _text(address.get("zip")),
        _text(address.get("country")),
        _float(address.get("latitude")),
        _float(address.get("longitude")),
        parse_timestamp(record.get("createdOn")),
        _required_modified(record),
        _jsonb(record),
    )


def invoice_row(record: dict[str, Any]) -> Row:
    """A row for `stsync_stage_invoices`."""
    return (
        _required_id(record),
        _ref_id(record.get("customer")),
        _text(record.get("referenceNumber")),
        parse_timestamp(record.get("invoiceDate")),
        parse_timestamp(record.get("dueDate")),
        _decimal(record.get("subTotal")),
        _decimal(record.get("salesTax")),
        _decimal(record.get("total")),
        _decimal(record.get("balance")),
        _ref_id(record.get("job")),
        _ref_id(record.get("businessUnit")),
        _required_active(record),
        parse_timestamp(record.get("createdOn")),
        _required_modified(record),
        _jsonb(record),
    )


CUSTOMER_COLUMNS = (
    "id", "name", "type", "active", "balance", "street", "unit", "city", "state", "zip",
    "country", "latitude", "longitude", "created_on", "modified_on", "payload",
)  # fmt: skip
INVOICE_COLUMNS = (
    "id", "customer_id", "reference_number", "invoice_date", "due_date", "sub_total",
    "sales_tax", "total", "balance", "job_id", "business_unit_id", "active", "created_on",
    "modified_on", "payload",
)  # fmt: skip

_MODIFIED_INDEX = {DataType.CUSTOMERS: 14, DataType.INVOICES: 13}


@dataclass(frozen=True)
class Shape:
    """How one data type is staged and merged."""

    data_type: DataType
    convert: Callable[[dict[str, Any]], Row]
    columns: tuple[str, ...]
    table: str  # in the `servicetitan` schema; also names its stage and merge in store/records.py

    @property
    def modified_index(self) -> int:
        return _MODIFIED_INDEX[self.data_type]


SHAPES: dict[DataType, Shape] = {
    DataType.CUSTOMERS: Shape(
        DataType.CUSTOMERS,
        customer_row,
        CUSTOMER_COLUMNS,
        "customers",
    ),
    DataType.INVOICES: Shape(
        DataType.INVOICES,
        invoice_row,
        INVOICE_COLUMNS,
        "invoices",
    ),
}


@dataclass
class Batch:
    """Rows converted from one or more pages, deduplicated by id (latest modifiedOn wins)."""

    shape: Shape
    rows: dict[int, Row]
    rejected: list[Rejected]
    processed: int = 0
    pages: int = 0
    nbytes: int = 0
    continue_from: str | None = None
    max_modified: datetime | None = None
    list_pages: list[int] = field(default_factory=list)  # a backfill's page numbers in the batch

    def add_page(
        self,
        records: Sequence[Any],
        continue_from: str | None,
        nbytes: int = 0,
        unreadable: Sequence[Rejected] = (),
        list_page: int | None = None,
    ) -> None:
        """Convert a page now, so that only compact rows (payload as JSON bytes) stay in memory.

        `unreadable`: records of the page that could not even be decoded, already rejected.
        """
        convert, rows, mod_i = self.shape.convert, self.rows, self.shape.modified_index
        max_modified = self.max_modified
        for record in records:
            try:
                if not isinstance(record, dict):
                    raise InvalidRecord(
                        f"a record must be a JSON object, got {type(record).__name__}"
                    )
                row = convert(record)
            except InvalidRecord as exc:
                raw_id = record.get("id") if isinstance(record, dict) else None
                raw = orjson.dumps(record)
                self.rejected.append(
                    Rejected(
                        _record_id(raw_id),
                        str(exc),
                        raw,
                        jsonb_ok=_NUL_ESCAPE not in raw,
                    )
                )
                continue
            previous = rows.get(row[0])
            modified = row[mod_i]
            if previous is None or previous[mod_i] <= modified:
                rows[row[0]] = row
            if max_modified is None or modified > max_modified:
                max_modified = modified
        self.rejected.extend(unreadable)
        self.max_modified = max_modified
        self.processed += len(records) + len(unreadable)
        self.pages += 1
        self.nbytes += nbytes
        self.continue_from = continue_from
        if list_page is not None:
            self.list_pages.append(list_page)

    def absorb(self, part: Batch) -> None:
        """Add a page converted on its own (a backfill's list page) by the rules of `add_page`."""
        rows, mod_i = self.rows, self.shape.modified_index
        if not rows:
            self.rows = rows = dict(part.rows)
        else:
            for key, row in part.rows.items():
                previous = rows.get(key)
                if previous is None or previous[mod_i] <= row[mod_i]:
                    rows[key] = row
        self.rejected.extend(part.rejected)
        if part.max_modified is not None and (
            self.max_modified is None or part.max_modified > self.max_modified
        ):
            self.max_modified = part.max_modified
        self.processed += part.processed
        self.pages += part.pages
        self.nbytes += part.nbytes
        self.continue_from = part.continue_from
        self.list_pages.extend(part.list_pages)

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.rejected)


def new_batch(data_type: DataType) -> Batch:
    """An empty batch for one data type."""
    return Batch(SHAPES[data_type], {}, [])
