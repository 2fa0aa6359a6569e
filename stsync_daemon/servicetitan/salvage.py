"""Reading what can be read of an export page that does not decode as a whole.

orjson refuses a whole document for one record holding a lone surrogate escape (`"\\ud800"`) or a
number beyond double range (`1e400`). Such a page is still a complete object: a small scanner finds
the exact bytes of each element of its `data` array, and each is decoded on its own, so one bad
record costs one record rather than the page. A body that is not a complete object with a `data`
array (cut short, or not JSON at all) is refused whole, as before.

The scanner tracks strings (with their escapes) and nesting only; whether each element is valid
JSON is left to orjson. It runs only after orjson has refused the page, so the usual path costs
nothing.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .models import UnreadableRecord

_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_STRING_STOP = re.compile(rb'["\\]')
_STRUCTURE = re.compile(rb'[{}\[\]"]')
_SCALAR = re.compile(rb"[-+.0-9A-Za-z]+")  # numbers, true, false, null (checked by orjson)
_INTEGER = re.compile(rb"-?[0-9]+")
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_CLOSER = {ord("{"): ord("}"), ord("["): ord("]")}

Span = tuple[int, int]


class _Cut(Exception):
    """The body ends, or breaks, before the object it opened is complete."""


def _skip(body: bytes, i: int) -> int:
    match = _WHITESPACE.match(body, i)
    return match.end() if match else i


def _string_end(body: bytes, i: int) -> int:
    """The index after the string opened by the quote at `i`."""
    j = i + 1
    while True:
        stop = _STRING_STOP.search(body, j)
        if stop is None:
            raise _Cut
        k = stop.start()
        if body[k] == _QUOTE:
            return k + 1
        j = k + 2  # an escape: the next byte is never the string's end (`\uXXXX` holds no quote)


def _value_end(body: bytes, i: int) -> int:
    """The index after the value starting at `i`: a string, an object/array, or a bare scalar."""
    if i >= len(body):
        raise _Cut
    first = body[i]
    if first == _QUOTE:
        return _string_end(body, i)
    closer = _CLOSER.get(first)
    if closer is None:
        scalar = _SCALAR.match(body, i)
        if scalar is None or scalar.end() == len(body):
            raise _Cut  # not a value, or a number running to the very end: the body was cut
        return scalar.end()
    expected = [closer]
    j = i + 1
    while expected:
        found = _STRUCTURE.search(body, j)
        if found is None:
            raise _Cut
        k = found.start()
        char = body[k]
        if char == _QUOTE:
            j = _string_end(body, k)
            continue
        opened = _CLOSER.get(char)
        if opened is not None:
            expected.append(opened)
        elif char != expected.pop():
            raise _Cut  # `{ ]`: not a structure anyone can split safely
        j = k + 1
    return j


def _members(body: bytes, i: int) -> tuple[list[tuple[bytes, Span]], list[Span] | None, int]:
    """The members of the object opened at `i` (raw key, value span), the element spans of its
    last `data` array if any, and the index after the object."""
    members: list[tuple[bytes, Span]] = []
    data: list[Span] | None = None
    i = _skip(body, i + 1)
    if body[i : i + 1] == b"}":
        return members, data, i + 1
    while True:
        if body[i : i + 1] != b'"':
            raise _Cut
        key_end = _string_end(body, i)
        key = body[i + 1 : key_end - 1]
        i = _skip(body, key_end)
        if body[i : i + 1] != b":":
            raise _Cut
        i = _skip(body, i + 1)
        if key == b"data" and body[i : i + 1] == b"[":
            data, end = _elements(body, i)
        else:
            end = _value_end(body, i)
            if key == b"data":
                data = None  # a repeated key: the last one wins, as when decoding
        members.append((key, (i, end)))
        i = _skip(body, end)
        separator = body[i : i + 1]
        if separator == b"}":
            return members, data, i + 1
        if separator != b",":
            raise _Cut
        i = _skip(body, i + 1)


def _elements(body: bytes, i: int) -> tuple[list[Span], int]:
    """The span of each element of the array opened at `i`, and the index after the array."""
    spans: list[Span] = []
    i = _skip(body, i + 1)
    if body[i : i + 1] == b"]":
        return spans, i + 1
    while True:
        end = _value_end(body, i)
        spans.append((i, end))
        i = _skip(body, end)
        separator = body[i : i + 1]
        if separator == b"]":
            return spans, i + 1
        if separator != b",":
            raise _Cut
        i = _skip(body, i + 1)


def split_page(body: bytes) -> tuple[dict[bytes, Span], list[Span]] | None:
    """The envelope's members (raw key → value span, `data` excluded) and the span of each `data`
    element, or None unless the body is one complete object with a `data` array."""
    try:
        start = _skip(body, 0)
        if body[start : start + 1] != b"{":
            return None
        members, data, end = _members(body, start)
    except _Cut:
        return None
    if data is None or _skip(body, end) != len(body):
        return None
    return {key: span for key, span in members if key != b"data"}, data


def record_id(raw: bytes) -> str | None:
    """The integer `id` among the top-level members of one element, if it has one."""
    try:
        start = _skip(raw, 0)
        if raw[start : start + 1] != b"{":
            return None
        members, _, _ = _members(raw, start)
    except _Cut:
        return None
    for key, (i, end) in members:
        if key == b"id":
            match = _INTEGER.fullmatch(raw, i, end)
            return match.group().decode() if match else None
    return None


def salvage_page(body: bytes) -> tuple[dict[str, Any], tuple[UnreadableRecord, ...]] | None:
    """The page decoded element by element: the envelope with the readable records as `data`, and
    the unreadable ones byte for byte; None if the envelope itself cannot be read."""
    split = split_page(body)
    if split is None:
        return None
    envelope, spans = split
    doc: dict[str, Any] = {}
    try:
        for key, (i, end) in envelope.items():
            doc[orjson.loads(b'"' + key + b'"')] = orjson.loads(body[i:end])
    except orjson.JSONDecodeError:
        return None
    records: list[Any] = []
    unreadable: list[UnreadableRecord] = []
    for i, end in spans:
        raw = body[i:end]
        try:
            records.append(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            unreadable.append(UnreadableRecord(raw=raw, reason=exc.msg, record_id=record_id(raw)))
    doc["data"] = records
    return doc, tuple(unreadable)
