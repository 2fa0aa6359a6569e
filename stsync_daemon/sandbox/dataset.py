"""One tenant's customers or invoices: a generated base plus the mutations made since start.

Order is by (modifiedOn, id). Base records get increasing modifiedOn in id order, and every mutation gets a
modifiedOn later than anything before it, so the export order is "untouched base records by index, then
the mutation log" — found by binary search, with no per-record state except the overrides.

In the `unsorted` export order (for fault tests) base records keep their id order but get modifiedOn
values scrambled within the base period, as an API that does not sort its export would serve them;
mutations still follow in log order. Positions there are scan positions, found by scanning.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import random
import re
import struct
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..enums import DataType, Environment
from .clock import TICKS_PER_MS, TICKS_PER_SECOND, format_ticks, now_ticks, parse_datetime
from .models import ExportOrder, PoisonKind
from .records import (
    CUSTOMER_ID_BASE,
    INVOICE_ID_BASE,
    MASK64,
    customer_json,
    invoice_json,
    mix,
)
from .truth import combine, format_digest, row_hash

BASE_START = parse_datetime("2018-01-01T00:00:00Z")
BASE_END = parse_datetime("2025-01-01T00:00:00Z")
_SPAN_MS = (BASE_END - BASE_START) // TICKS_PER_MS
BASE_START_MS = BASE_START // TICKS_PER_MS
BASE_START_S = BASE_START // TICKS_PER_SECOND
_CREATED_LAG_MS = 400 * 86_400 * 1000

Key = tuple[int, int]
"""A position in export order. `modified` order: (modifiedOn ticks, id), a page starts after it.
`unsorted` order: (scan position, least modifiedOn ticks), a page starts at the position (base
index, then base count + log index) and skips records modified before the least modifiedOn."""

START_KEY: Key = (-(2**62), -1)
UNSORTED_START: Key = (0, -(2**62))


class InvalidToken(ValueError):
    """A `from` value that is neither a date nor a live continuation token of this export."""


@dataclass(slots=True)
class Override:
    """What a mutation changed: the record's place in the log, its time, status and version."""

    seq: int
    ticks: int
    active: bool
    version: int
    created_ticks: int
    corrupt: bool = False
    poison: PoisonKind | None = None


def salt_for(seed: int, tenant_id: int, data_type: DataType) -> int:
    """The hash salt of one data set: same seed and tenant → same records."""
    kind = 1 if data_type is DataType.CUSTOMERS else 2
    return mix((seed * 0x100000001B3 ^ tenant_id * 0x9E3779B1 ^ kind * 0x85EBCA77) & MASK64)


_ENV_CODE = {Environment.INTEGRATION: 1, Environment.PRODUCTION: 2}
_TYPE_CODE = {DataType.CUSTOMERS: 1, DataType.INVOICES: 2}
_ORDER_CODE = {ExportOrder.MODIFIED: 1, ExportOrder.UNSORTED: 2}
# version, environment, data type, order, tenant, key (2), issued (ticks, 0: before any TTL), epoch
_TOKEN = struct.Struct(">BBBBqqqqI")
_TOKEN_VERSION = 2
_SCRAMBLE = 0x6A09E667F3BCC909

# Poison goes into one string field (after its first character) or replaces one numeric field's
# value, as text: no JSON encoder writes these, which is the point.
_POISON_STRING = {DataType.CUSTOMERS: '"name":"', DataType.INVOICES: '"summary":"'}
_POISON_NUMBER = {
    DataType.CUSTOMERS: re.compile(r'("creditLimit":)(?:null|[-+.0-9eE]+)'),
    DataType.INVOICES: re.compile(r'("taxRate":)(?:null|[-+.0-9eE]+)'),
}
_POISON_TEXT = {
    PoisonKind.NUL: "\\u0000",
    PoisonKind.SURROGATE: "\\ud800",
    PoisonKind.BIGINT: "92233720368547758070",
    PoisonKind.OVERFLOW: "1e999999",
}


def poison_json(text: str, data_type: DataType, kind: PoisonKind) -> str:
    """A record's JSON text with the poison of `kind` written into it."""
    poison = _POISON_TEXT[kind]
    if kind in (PoisonKind.NUL, PoisonKind.SURROGATE):
        at = text.index(_POISON_STRING[data_type]) + len(_POISON_STRING[data_type]) + 1
        return text[:at] + poison + text[at:]
    return _POISON_NUMBER[data_type].sub(lambda m: m.group(1) + poison, text, count=1)


class Dataset:
    """Customers or invoices of one tenant in one environment."""

    def __init__(
        self,
        *,
        seed: int,
        tenant_id: int,
        environment: Environment,
        data_type: DataType,
        count: int,
        customers: int = 0,
        clock: Callable[[], int],
    ) -> None:
        self.seed = seed
        self.tenant_id = tenant_id
        self.environment = environment
        self.data_type = data_type
        self.base_count = count
        self.created = 0
        self.overrides: dict[int, Override] = {}
        self.log_ticks: list[int] = []
        self.log_ids: list[int] = []
        self.generation = 0
        self.epoch = 0
        self._clock = clock
        self._salt = salt_for(seed, tenant_id, data_type)
        self._customer_salt = salt_for(seed, tenant_id, DataType.CUSTOMERS)
        self._customers = customers
        self._id_base = CUSTOMER_ID_BASE if data_type is DataType.CUSTOMERS else INVOICE_ID_BASE
        self._inactive_per_mille = 40 if data_type is DataType.CUSTOMERS else 20
        self._rng = random.Random(mix(self._salt ^ 0x5EED))
        self._step_ms = max(1, _SPAN_MS // count) if count else 1
        self._base_digest: int | None = None
        self._base_active_count = 0
        self._base_max_ticks: int | None = None
        # List endpoint indexes, built on first use: the inactive ids (kept sorted as records change),
        # the base ids in creation order (fixed: createdOn never changes), and materialised listings
        # by filter (generation, ids), for `listing`.
        self._inactive: list[int] | None = None
        self._by_created: array[int] | None = None
        self.listings: OrderedDict[Hashable, tuple[int, array[int]]] = OrderedDict()
        self.order = ExportOrder.MODIFIED
        # The generator of base records for the current order (an attribute, not a branch per record).
        self._base: Callable[[int], tuple[int, bool, int, int]] = self._base_modified

    # --- identity of records -------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Records that exist now, active or not."""
        return self.base_count + self.created

    def id_at(self, index: int) -> int:
        """The id of the record at an index (ids are dense from the data type's base)."""
        return self._id_base + 1 + index

    def index_of(self, record_id: int) -> int | None:
        """The index of an id, or None if no such record exists."""
        index = record_id - self._id_base - 1
        return index if 0 <= index < self.total else None

    def _base_ticks(self, index: int) -> int:
        return self._base(index)[0]

    def _base_modified(self, index: int) -> tuple[int, bool, int, int]:
        """(modifiedOn ticks, active, createdOn ticks, hash) of a record as generated.

        One hash per record gives them all; modifiedOn falls in the record's own slice of the base
        period, so it increases with the index. createdOn is whole seconds (cheaper to format).
        """
        h = mix(self._salt ^ index)
        step = self._step_ms
        ms = BASE_START_MS + index * step + h % step
        ticks = ms * TICKS_PER_MS + ((h >> 40) % TICKS_PER_MS if (h >> 33) & 1 else 0)
        created = max(BASE_START_S, (ms - (h >> 20) % _CREATED_LAG_MS) // 1000) * TICKS_PER_SECOND
        return ticks, (h >> 54) % 1000 >= self._inactive_per_mille, created, h

    def _base_unsorted(self, index: int) -> tuple[int, bool, int, int]:
        """`_base_modified`, but modifiedOn falls in the slice of a scrambled index, so it does not
        increase with the index (slices may repeat: ties are harmless)."""
        h = mix(self._salt ^ index)
        step = self._step_ms
        slot = mix(h ^ _SCRAMBLE) % max(1, self.base_count)
        ms = BASE_START_MS + slot * step + h % step
        ticks = ms * TICKS_PER_MS + ((h >> 40) % TICKS_PER_MS if (h >> 33) & 1 else 0)
        created = max(BASE_START_S, (ms - (h >> 20) % _CREATED_LAG_MS) // 1000) * TICKS_PER_SECOND
        return ticks, (h >> 54) % 1000 >= self._inactive_per_mille, created, h

    def set_order(self, order: ExportOrder) -> None:
        """Serve the export in `order` from now on.

        Switching changes the base records' modifiedOn (and so the truth), and ends the tokens
        issued so far: set it before a test exports.
        """
        order = ExportOrder(order)
        if order is self.order:
            return
        self.order = order
        self._base = self._base_modified if order is ExportOrder.MODIFIED else self._base_unsorted
        self._base_digest = None
        self._base_max_ticks = None
        # Base createdOn follows the order's modifiedOn; whether a record is active does not.
        self._by_created = None
        self.listings.clear()
        self.invalidate_tokens()

    def _base_key(self, index: int) -> Key:
        return (self._base(index)[0], self._id_base + 1 + index)

    def state(self, record_id: int) -> tuple[int, bool, int, int]:
        """(modifiedOn ticks, active, version, createdOn ticks) of an existing id."""
        override = self.overrides.get(record_id)
        if override is not None:
            return override.ticks, override.active, override.version, override.created_ticks
        ticks, active, created, _ = self._base(record_id - self._id_base - 1)
        return ticks, active, 0, created

    def render_json(self, record_id: int) -> str:
        """The record as served now, as JSON text."""
        override = self.overrides.get(record_id)
        if override is not None and override.corrupt:
            # Real data sometimes breaks even the fields a sync depends on.
            record = orjson.loads(self._render_valid(record_id))
            record["modifiedOn"] = "not a date"
            return orjson.dumps(record).decode()
        if override is not None and override.poison is not None:
            return poison_json(self._render_valid(record_id), self.data_type, override.poison)
        return self._render_valid(record_id)

    def _render_valid(self, record_id: int) -> str:
        ticks, active, version, created = self.state(record_id)
        if self.data_type is DataType.CUSTOMERS:
            h = mix(self._salt ^ (record_id - self._id_base - 1))
            return customer_json(h, record_id, version, ticks, created, active)
        return invoice_json(
            self._salt,
            record_id,
            version,
            ticks,
            created,
            active,
            self._customer_salt,
            self._customers,
        )

    def render_page(self, ids: Iterable[int]) -> list[str]:
        """Records as served now, as JSON text: `render_json` without its per-record detours.

        The export's hot path: the sandbox renders a cold page while the client decodes the last one,
        and must stay well ahead of it.
        """
        overrides = self.overrides
        base = self._base
        index_base = self._id_base + 1
        out: list[str] = []
        if self.data_type is DataType.CUSTOMERS:
            for record_id in ids:
                if record_id in overrides:
                    out.append(self.render_json(record_id))
                else:
                    ticks, active, created, h = base(record_id - index_base)
                    out.append(customer_json(h, record_id, 0, ticks, created, active))
            return out
        salt, customer_salt, customers = self._salt, self._customer_salt, self._customers
        for record_id in ids:
            if record_id in overrides:
                out.append(self.render_json(record_id))
            else:
                ticks, active, created, _ = base(record_id - index_base)
                out.append(
                    invoice_json(
                        salt, record_id, 0, ticks, created, active, customer_salt, customers
                    )
                )
        return out

    def render(self, record_id: int) -> dict[str, Any]:
        """The record as served now; one poisoned beyond what JSON can decode, as it was before."""
        try:
            record: dict[str, Any] = orjson.loads(self.render_json(record_id))
        except orjson.JSONDecodeError:
            record = orjson.loads(self._render_valid(record_id))
        return record

    # --- export order --------------------------------------------------------------------------

    def page_after(self, key: Key, limit: int, cutoff: int | None = None) -> tuple[list[int], bool]:
        """Up to `limit` ids after `key` in (modifiedOn, id) order, and whether more are visible.

        Records modified after `cutoff` (ticks) are not visible yet.
        """
        out: list[int] = []
        want = limit + 1
        overrides = self.overrides
        n = self.base_count
        if n:
            index = bisect.bisect_right(range(n), key, key=self._base_key)
            id_base = self._id_base + 1
            # Base records all predate BASE_END: only a cutoff before it hides any of them.
            base_cutoff = cutoff if cutoff is not None and cutoff < BASE_END else None
            while index < n and len(out) < want:
                record_id = id_base + index
                if record_id not in overrides:
                    if base_cutoff is not None and self._base_ticks(index) > base_cutoff:
                        return out[:limit], False
                    out.append(record_id)
                index += 1
        if len(out) < want and self.log_ticks:
            log_ticks, log_ids = self.log_ticks, self.log_ids
            j = bisect.bisect_left(log_ticks, key[0])
            if j < len(log_ticks) and log_ticks[j] == key[0] and log_ids[j] <= key[1]:
                j += 1
            while j < len(log_ticks) and len(out) < want:
                if cutoff is not None and log_ticks[j] > cutoff:
                    return out[:limit], False
                record_id = log_ids[j]
                if overrides[record_id].seq == j:
                    out.append(record_id)
                j += 1
        return out[:limit], len(out) > limit

    def key_of(self, record_id: int) -> Key:
        """The export position of an existing id (in `modified` order)."""
        return (self.state(record_id)[0], record_id)

    def page_unsorted(
        self, key: Key, limit: int, cutoff: int | None = None
    ) -> tuple[list[int], bool, Key]:
        """`page_after` for the `unsorted` order: up to `limit` ids from the key's scan position
        with modifiedOn at least its least modifiedOn, whether more are visible, and the key to go
        on from.

        A linear scan (O(n) per page when the filter is selective), fine for the fault tests this
        order is for, up to some 50,000 records. A record not visible yet stops the page, as in
        `modified` order, so that nothing after it is skipped for good.
        """
        position, since = key
        out: list[int] = []
        positions: list[int] = []
        want = limit + 1
        overrides = self.overrides
        n = self.base_count
        base = self._base
        id_base = self._id_base + 1
        while position < n and len(out) < want:
            record_id = id_base + position
            if record_id not in overrides:
                ticks = base(position)[0]
                if ticks >= since:
                    if cutoff is not None and ticks > cutoff:
                        return out, False, (position, since)
                    out.append(record_id)
                    positions.append(position)
            position += 1
        if len(out) < want:
            log_ticks, log_ids = self.log_ticks, self.log_ids
            # The log is in modifiedOn order: what is older than `since` is skipped at once.
            j = max(position - n, bisect.bisect_left(log_ticks, since))
            while j < len(log_ids) and len(out) < want:
                if cutoff is not None and log_ticks[j] > cutoff:
                    return out, False, (n + j, since)
                record_id = log_ids[j]
                if overrides[record_id].seq == j:
                    out.append(record_id)
                    positions.append(n + j)
                j += 1
            position = n + j
        if len(out) > limit:
            return out[:limit], True, (positions[limit], since)
        return out, False, (position, since)

    def iter_by_modified(self, reverse: bool = False) -> Iterator[int]:
        """Every id in (modifiedOn, id) order (or its reverse)."""
        overrides = self.overrides
        if self.order is ExportOrder.UNSORTED:
            # Base records are not in modifiedOn order here: sort them (a fault-test mode).
            base = self._base
            id_base = self._id_base + 1
            untouched = sorted(
                (base(index)[0], id_base + index)
                for index in range(self.base_count)
                if id_base + index not in overrides
            )
            ids = [record_id for _, record_id in untouched]
            ids += [r for j, r in enumerate(self.log_ids) if overrides[r].seq == j]
            yield from (reversed(ids) if reverse else ids)
            return
        if not reverse:
            for index in range(self.base_count):
                record_id = self._id_base + 1 + index
                if record_id not in overrides:
                    yield record_id
            for j, record_id in enumerate(self.log_ids):
                if overrides[record_id].seq == j:
                    yield record_id
            return
        for j in range(len(self.log_ids) - 1, -1, -1):
            record_id = self.log_ids[j]
            if overrides[record_id].seq == j:
                yield record_id
        for index in range(self.base_count - 1, -1, -1):
            record_id = self._id_base + 1 + index
            if record_id not in overrides:
                yield record_id

    def inactive_ids(self) -> list[int]:
        """Every inactive id, ascending (built by one pass on first use, then kept up to date)."""
        if self._inactive is None:
            base = self._base
            id_base = self._id_base + 1
            overrides = self.overrides
            self._inactive = [
                id_base + index
                for index in range(self.total)
                if not (
                    overrides[id_base + index].active
                    if id_base + index in overrides
                    else base(index)[1]
                )
            ]
        return self._inactive

    def base_ids_by_created(self) -> array[int]:
        """The base records' ids in (createdOn, id) order; records created later follow them all."""
        if self._by_created is None:
            base = self._base
            id_base = self._id_base + 1
            order = sorted(range(self.base_count), key=lambda index: (base(index)[2], index))
            self._by_created = array("q", (id_base + index for index in order))
        return self._by_created

    def iter_by_id(self, reverse: bool = False) -> Iterator[int]:
        """Every id in id order (not createdOn order for base records: see `base_ids_by_created`)."""
        ids = range(self._id_base + 1, self._id_base + 1 + self.total)
        return iter(reversed(ids) if reverse else ids)

    # --- continuation tokens -------------------------------------------------------------------

    def encode_token(self, key: Key, issued: int = 0) -> str:
        """An opaque token for `key`, bound to this export, its order and its current epoch.

        `issued` (ticks) lets a token expire; 0 when no expiry is in force, so that a position
        always gives the same token.
        """
        raw = _TOKEN.pack(
            _TOKEN_VERSION,
            _ENV_CODE[self.environment],
            _TYPE_CODE[self.data_type],
            _ORDER_CODE[self.order],
            self.tenant_id,
            key[0],
            key[1],
            issued,
            self.epoch,
        )
        check = hashlib.blake2b(raw, digest_size=6, key=b"stsync-sandbox").digest()
        return base64.urlsafe_b64encode(raw + check).decode().rstrip("=")

    def decode_from(
        self, value: str | None, *, max_age: int | None = None, now: int | None = None
    ) -> Key:
        """The position a `from` parameter means: start, a date (modifiedOn ≥ it), or a token.

        With `max_age` (ticks), a token issued longer ago than that before `now` (default: the
        current time) is refused, as is one issued while no expiry was in force.
        """
        unsorted = self.order is ExportOrder.UNSORTED
        if value is None or value == "":
            return UNSORTED_START if unsorted else START_KEY
        try:
            since = parse_datetime(value)
        except ValueError:
            pass
        else:
            return (0, since) if unsorted else (since - 1, 2**62)
        try:
            blob = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except ValueError:
            raise InvalidToken(value) from None
        raw, check = blob[: _TOKEN.size], blob[_TOKEN.size :]
        if (
            len(raw) != _TOKEN.size
            or check != hashlib.blake2b(raw, digest_size=6, key=b"stsync-sandbox").digest()
        ):
            raise InvalidToken(value)
        version, env, kind, order, tenant, first, second, issued, epoch = _TOKEN.unpack(raw)
        if (
            version != _TOKEN_VERSION
            or env != _ENV_CODE[self.environment]
            or kind != _TYPE_CODE[self.data_type]
            or order != _ORDER_CODE[self.order]
            or tenant != self.tenant_id
            or epoch != self.epoch
        ):
            raise InvalidToken(value)
        if max_age is not None and (now_ticks() if now is None else now) - issued > max_age:
            raise InvalidToken(value)
        return (first, second)

    # --- mutations -----------------------------------------------------------------------------

    def _log(self, record_id: int, active: bool, *, new: bool = False) -> None:
        ticks = self._clock()
        previous = self.overrides.get(record_id)
        inactive = self._inactive
        if inactive is not None:
            at = bisect.bisect_left(inactive, record_id)
            listed = at < len(inactive) and inactive[at] == record_id
            if listed and active:
                del inactive[at]
            elif not listed and not active:
                inactive.insert(at, record_id)
        if previous is not None:
            version, created = previous.version + 1, previous.created_ticks
        elif new:
            version, created = 0, ticks
        else:
            index = record_id - self._id_base - 1
            version, created = 1, self._base(index)[2]
        self.overrides[record_id] = Override(len(self.log_ids), ticks, active, version, created)
        self.log_ticks.append(ticks)
        self.log_ids.append(record_id)
        self.generation += 1

    def _random_id(self) -> int:
        return self._id_base + 1 + self._rng.randrange(self.total)

    def modify(self, count: int) -> list[int]:
        """Change a field of `count` random records (active or not), each with a new modifiedOn."""
        ids: list[int] = []
        for _ in range(count if self.total else 0):
            record_id = self._random_id()
            self._log(record_id, self.state(record_id)[1])
            ids.append(record_id)
        return ids

    def deactivate(self, count: int) -> list[int]:
        """Set active=false on up to `count` random active records."""
        ids: list[int] = []
        for _ in range(count if self.total else 0):
            for _attempt in range(50):
                record_id = self._random_id()
                if self.state(record_id)[1]:
                    self._log(record_id, False)
                    ids.append(record_id)
                    break
        return ids

    def create(self, count: int) -> list[int]:
        """Append `count` new active records with new ids."""
        ids: list[int] = []
        for _ in range(count):
            record_id = self._id_base + 1 + self.total
            self.created += 1
            self._log(record_id, True, new=True)
            ids.append(record_id)
        return ids

    def corrupt(self, count: int) -> list[int]:
        """Serve `count` random records with an unparseable modifiedOn from now on.

        The truth still counts each as the valid record it should have been.
        """
        ids: list[int] = []
        for _ in range(count if self.total else 0):
            record_id = self._random_id()
            self._log(record_id, self.state(record_id)[1])
            self.overrides[record_id].corrupt = True
            ids.append(record_id)
        return ids

    def poison(self, count: int, kind: PoisonKind) -> list[int]:
        """Serve `count` distinct random records with the poison of `kind` in one field from now on.

        Each gets a new modifiedOn; a later change of the record serves it clean again ("fixed
        upstream"). The truth counts each like any record.
        """
        ids: list[int] = []
        for index in self._rng.sample(range(self.total), min(count, self.total)):
            record_id = self.id_at(index)
            self._log(record_id, self.state(record_id)[1])
            self.overrides[record_id].poison = PoisonKind(kind)
            ids.append(record_id)
        return ids

    def touch(self, record_id: int, active: bool | None = None) -> None:
        """Change one given record (new version and modifiedOn; `active` if given)."""
        if self.index_of(record_id) is None:
            raise KeyError(record_id)
        self._log(record_id, self.state(record_id)[1] if active is None else active)

    def mutate_randomly(self) -> None:
        """One background change: 70% modify, 10% deactivate, 20% create."""
        draw = self._rng.random()
        if draw < 0.7:
            self.modify(1)
        elif draw < 0.8:
            self.deactivate(1)
        else:
            self.create(1)

    def invalidate_tokens(self) -> None:
        """Continuation tokens issued so far stop working."""
        self.epoch += 1
        self.generation += 1

    # --- ground truth --------------------------------------------------------------------------

    def rows(self) -> Iterator[tuple[int, str, bool]]:
        """(id, modifiedOn as served, active) of every record."""
        for record_id in self.iter_by_id():
            ticks, active, _, _ = self.state(record_id)
            yield record_id, format_ticks(ticks), active

    def truth(self) -> tuple[int, int, str, str | None]:
        """(count, active count, digest, max modifiedOn) without regenerating untouched records twice."""
        if self._base_digest is None:
            hashes = []
            active = 0
            latest: int | None = None
            for index in range(self.base_count):
                ticks, is_active, _, _ = self._base(index)
                active += is_active
                hashes.append(row_hash(self.id_at(index), format_ticks(ticks), is_active))
                latest = ticks if latest is None else max(latest, ticks)
            self._base_digest = combine(hashes)
            self._base_active_count = active
            self._base_max_ticks = latest
        total = self._base_digest
        active = self._base_active_count
        for record_id, override in self.overrides.items():
            index = record_id - self._id_base - 1
            if index < self.base_count:
                base_ticks, base_active, _, _ = self._base(index)
                total -= row_hash(record_id, format_ticks(base_ticks), base_active)
                active -= base_active
            total += row_hash(record_id, format_ticks(override.ticks), override.active)
            active += override.active
        if self.log_ticks:
            max_ticks: int | None = self.log_ticks[-1]
        else:
            max_ticks = self._base_max_ticks
        return (
            self.total,
            active,
            format_digest(total),
            None if max_ticks is None else format_ticks(max_ticks),
        )
