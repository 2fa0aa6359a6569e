"""Turn ServiceTitan records into typed rows for the stage tables.

Only id, modifiedOn and active are required: a record without them becomes a dead letter.
Every other typed column is best effort (NULL when absent or malformed); the payload keeps the record
exactly as received.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from ..enums import DataType

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Rejected:
    """A record that cannot be stored as a row."""

    record_id: str | None
    reason: str
    payload: dict[str, Any] | Any


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


def _required_id(record: dict[str, Any]) -> int:
    value = record.get("id")
    if type(value) is not int or value <= 0:
        raise InvalidRecord(f"id must be a positive integer, got {value!r}")
    return value


def _required_modified(record: dict[str, Any]) -> datetime:
    value = record.get("modifiedOn")
    parsed = parse_timestamp(value)
    if parsed is None:
        raise InvalidRecord(f"modifiedOn must be an ISO 8601 timestamp, got {value!r}")
    return parsed


def _required_active(record: dict[str, Any]) -> bool:
    value = record.get("active")
    if type(value) is not bool:
        raise InvalidRecord(f"active must be true or false, got {value!r}")
    return value


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(value) if isinstance(value, str) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


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
    return b"\x01" + orjson.dumps(record)


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
    stage_table: str
    create_stage: str
    merge: str
    table: str

    @property
    def modified_index(self) -> int:
        return _MODIFIED_INDEX[self.data_type]


SHAPES: dict[DataType, Shape] = {
    DataType.CUSTOMERS: Shape(
        DataType.CUSTOMERS,
        customer_row,
        CUSTOMER_COLUMNS,
        "stsync_stage_customers",
        "create_stage_customers",
        "merge_customers",
        "customers",
    ),
    DataType.INVOICES: Shape(
        DataType.INVOICES,
        invoice_row,
        INVOICE_COLUMNS,
        "stsync_stage_invoices",
        "create_stage_invoices",
        "merge_invoices",
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

    def add_page(self, records: Sequence[Any], continue_from: str | None, nbytes: int = 0) -> None:
        """Convert a page now, so that only compact rows (payload as JSON bytes) stay in memory."""
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
                self.rejected.append(
                    Rejected(None if raw_id is None else str(raw_id), str(exc), record)
                )
                continue
            previous = rows.get(row[0])
            modified = row[mod_i]
            if previous is None or previous[mod_i] <= modified:
                rows[row[0]] = row
            if max_modified is None or modified > max_modified:
                max_modified = modified
        self.max_modified = max_modified
        self.processed += len(records)
        self.pages += 1
        self.nbytes += nbytes
        self.continue_from = continue_from

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.rejected)


def new_batch(data_type: DataType) -> Batch:
    """An empty batch for one data type."""
    return Batch(SHAPES[data_type], {}, [])
