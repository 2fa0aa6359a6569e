"""Hostile control-socket requests: thousands of malformed ones against the real daemon.

Every request comes from one seeded `random.Random` (`STSYNC_HOSTILE_SEED` replaces the seed), so a
failure names its case and replays. None of them may start work: run requests are dry runs or
invalid. The daemon must answer each with a 4xx in the `{"message", "code"}` shape, or a 2xx when
the request was valid after all (a read, a dry run); never a 5xx (its database is up). It may only
close without answering a connection whose request never completed. Afterwards it must still run,
report itself healthy, have started no run, and have logged no critical line and no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import os
import random
import shutil
import tempfile
import typing
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from yarl import URL

from stsync_daemon.control.protocol import ErrorBody
from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.sandbox import Sandbox, SandboxConfig
from tests.support import daemon_settings, write_key

SEED = int(os.environ.get("STSYNC_HOSTILE_SEED", "20261201"))
MIB = 1024 * 1024
CONCURRENCY = 16
ANSWER_SECONDS = 15.0
ERROR_CODES = set(typing.get_args(ErrorBody.model_fields["code"].annotation))
SECRET_MARK = "cs.HOSTILE-SECRET"  # in every secret we send: it must come back nowhere

# Every route of the protocol and the methods it allows; `{id}` is filled in per request.
ROUTES: dict[str, set[str]] = {
    "/v1/health": {"GET"},
    "/v1/status": {"GET"},
    "/v1/process": {"POST"},
    "/v1/retry": {"POST"},
    "/v1/runs": {"GET"},
    "/v1/syncs/{id}": {"GET"},
    "/v1/instances": {"GET"},
    "/v1/cancel/{id}": {"POST"},
    "/v1/schedules": {"GET"},
    "/v1/report": {"GET"},
    "/v1/credentials": {"GET", "POST"},
    "/v1/credentials/{id}": {"GET", "PATCH", "DELETE"},
    "/v1/credentials/{id}/enable": {"POST"},
    "/v1/credentials/{id}/disable": {"POST"},
    "/v1/credentials/{id}/test": {"POST"},
    "/v1/dead-letters": {"GET"},
}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "FOO")
QUERY_PARAMS: dict[str, tuple[str, ...]] = {
    "/v1/status": (
        "company_id",
        "run_id",
        "environment",
        "data_type",
        "running_only",
        "failed_only",
        "last_24h",
        "since",
        "limit",
    ),
    "/v1/runs": ("limit",),
    "/v1/report": ("hours",),
    "/v1/credentials": ("environment", "company_id", "status"),
    "/v1/dead-letters": (
        "credential_id",
        "company_id",
        "environment",
        "data_type",
        "include_resolved",
        "limit",
    ),
}
ID_PARAMS = frozenset({"credential_id", "run_id"})
# Query values as sent (already percent-encoded where they need it).
QUERY_VALUES = (
    "1e308",
    "-1e308",
    "-1",
    "0",
    str(2**31),
    str(2**63),
    str(2**70),
    "-" + str(2**63 + 1),
    "1.5",
    "NaN",
    "nan",
    "inf",
    "-Infinity",
    "abc",
    "",
    "%20",
    "true",
    "false",
    "yes",
    "2",
    "%00",
    "a%00b",
    "%FF",
    "%ED%A0%80",
    "%C0%AE",
    "%E2%80%A8",
    "%C3%A9" * 50,
    "x" * 3000,
    "production",
    "both",
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
    "%",
    "%%",
    "%zz",
    "[]",
    "{}",
)
# JSON values put in every body field (besides the raw tokens below).
JSON_VALUES: tuple[Any, ...] = (
    1e308,
    -1e308,
    -1,
    0,
    1,
    2**31,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63) - 1,
    2**70,
    1.5,
    -0.0,
    1e-320,
    "NaN",
    "inf",
    "-Infinity",
    "1e308",
    str(2**70),
    "abc",
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u2028",
    "é" * 300,
    "x" * 100_000,
    True,
    False,
    None,
    [],
    {},
    [1, 2],
    {"a": 1},
    "production",
    "both",
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
)
RAW_TOKENS = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "0x10",
    "01",
    "+1",
    ".5",
    "1.",
    '"\\ud800"',
    '"\\udc00x"',
    '"\\u0000"',
    "tru",
    "[",
)
INVALID_UTF8 = (
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x82",
    b"\xe2\x28\xa1",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf0\x28\x8c\x28",
    b"\xf8\x88\x80\x80\x80",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
)
BAD_IDS = (
    "not-a-uuid",
    "0",
    "-1",
    "1e308",
    "null",
    "00000000-0000-0000-0000-00000000000",
    "00000000-0000-0000-0000-0000000000000",
    "g0000000-0000-0000-0000-000000000000",
    "00000000_0000_0000_0000_000000000000",
    "%00",
    "a%00b",
    "%FF",
    "%ED%A0%80",
    "%C3%A9",
    "%20",
    "..",
    "%2e%2e",
    "%2F",
    "%27%3B%20DROP%20TABLE%20stsync.credentials%3B%20--",
    "x" * 5000,
)


def _body_fields() -> dict[tuple[str, str], tuple[dict[str, Any], tuple[str, ...]]]:
    """(method, path) -> (a base body, the fields to fill with hostile values)."""
    add = {
        "company_id": "hostile",
        "company_name": "Hostile Co",
        "environment": "production",
        "tenant_id": 424242,
        "client_id": "cid.hostile",
        "client_secret": SECRET_MARK,
    }
    return {
        ("POST", "/v1/process"): (
            {"dry_run": True},
            (
                "environment",
                "company_id",
                "credential_id",
                "data_type",
                "dry_run",
                "estimate",
                "max_concurrent",
                "timeout_seconds",
                "full",
                "include_errored",
            ),
        ),
        ("POST", "/v1/retry"): (
            {"dry_run": True},
            (
                "max_age_hours",
                "max_retries",
                "exclude_auth_errors",
                "dry_run",
                "max_concurrent",
                "timeout_seconds",
            ),
        ),
        ("POST", "/v1/credentials"): (add, (*add, "app_key", "schedule_enabled")),
        ("PATCH", "/v1/credentials/{id}"): (
            {},
            (
                "company_name",
                "client_id",
                "client_secret",
                "app_key",
                "clear_app_key",
                "schedule_enabled",
            ),
        ),
    }


@dataclass(frozen=True)
class Case:
    """One hostile request: over aiohttp (method, target, body, headers) or `raw` bytes."""

    name: str
    method: str = "GET"
    target: str = "/v1/health"  # path and query, percent-encoded as sent
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = None
    complete: bool = True  # raw: a whole request (or garbage) the daemon must answer or refuse
    phase: int = 1  # credential adds come last, so no dry run ever meets a credential
    expect: frozenset[int] = frozenset()  # the statuses it may get, when that is known


@dataclass(frozen=True)
class Answer:
    """One HTTP answer of the daemon."""

    status: int
    content_type: str
    body: bytes


class Generator:
    """Builds every case from one seeded random source."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def path(self, template: str) -> str:
        return template.replace("{id}", self.uuid())

    def cases(self) -> list[Case]:
        out: list[Case] = []
        for part in (
            self.garbage,
            self.truncated,
            self.wrong_methods,
            self.unknown_paths,
            self.framing,
            self.utf8_in_request_line,
            self.huge_bodies,
            self.deep_nesting,
            self.utf8_in_bodies,
            self.query_values,
            self.body_values,
            self.bad_ids,
            self.duplicate_keys,
            self.content_types,
            self.extra_keys,
        ):
            out.extend(part())
        return out

    # -- byte level (raw sockets) ----------------------------------------------------------------

    def garbage(self) -> Iterator[Case]:
        rng = self.rng
        for n in range(300):
            kind = n % 6
            if kind == 0:
                data = rng.randbytes(rng.randint(1, 3000))
            elif kind == 1:
                data = bytes(rng.choice(b"abcXYZ /?:%-\t019") for _ in range(rng.randint(1, 400)))
            elif kind == 2:
                data = rng.choice([b"GET", b"POST", b"\x16\x03\x01", b"PRI * HTTP/2.0"]) + (
                    rng.randbytes(rng.randint(0, 200))
                )
            elif kind == 3:
                data = b"\x00" * rng.randint(1, 5000)
            elif kind == 4:
                data = b"\r\n" * rng.randint(1, 50) + rng.randbytes(rng.randint(1, 100))
            else:
                data = b"GET /v1/health HTTP/1.1\r\n" + rng.randbytes(rng.randint(1, 500))
            yield Case(f"garbage #{n}", raw=data + b"\r\n\r\n")
        yield Case(
            "http/2 preface", raw=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x12\x04" * 4
        )
        yield Case("tls client hello", raw=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 30)

    def _request(self) -> bytes:
        rng = self.rng
        template = rng.choice(list(ROUTES))
        method = rng.choice(sorted(ROUTES[template]))
        body = b'{"dry_run": true, "company_id": "abc", "limit": 5}'
        return (
            f"{method} {self.path(template)}?limit=5&company_id=x HTTP/1.1\r\n"
            f"Host: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Filler: {'f' * rng.randint(0, 200)}\r\n\r\n"
        ).encode() + body

    def truncated(self) -> Iterator[Case]:
        for n in range(200):
            request = self._request()
            # Never the whole request: a complete POST /v1/process would start a run.
            cut = self.rng.randint(1, len(request) - 1)
            yield Case(f"truncated #{n} at {cut}", raw=request[:cut], complete=False)
        yield Case(
            "body shorter than its Content-Length",
            raw=b"POST /v1/credentials HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{",
            complete=False,
        )
        yield Case(
            "expect 100-continue, then silence",
            raw=(
                b"POST /v1/process HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 2000000\r\n\r\n"
            ),
            complete=False,
        )

    def wrong_methods(self) -> Iterator[Case]:
        for template, allowed in ROUTES.items():
            for method in METHODS:
                if method in allowed or (method == "HEAD" and "GET" in allowed):
                    continue
                request = (
                    f"{method} {self.path(template)} HTTP/1.1\r\nHost: localhost\r\n"
                    "Content-Length: 2\r\nConnection: close\r\n\r\n{}"
                )
                yield Case(
                    f"{method} {template}",
                    method=method,
                    raw=request.encode(),
                    expect=frozenset({400, 405}),  # 400: a method aiohttp does not know at all
                )

    def framing(self) -> Iterator[Case]:
        """Headers and framing aiohttp's parser has to refuse."""
        # Every body here is a JSON array: were one accepted, a retry still could not start.
        head = b"POST /v1/retry HTTP/1.1\r\nHost: x\r\n"
        cases = {
            "huge header": b"GET /v1/health HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
            "huge request line": b"GET /v1/status?company_id="
            + b"a" * 20_000
            + b" HTTP/1.1\r\n\r\n",
            "too many headers": b"GET /v1/health HTTP/1.1\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
            + b"\r\n",
            "NUL in a header": b"GET /v1/health HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
            "space before colon": b"GET /v1/health HTTP/1.1\r\nHost : x\r\n\r\n",
            "header without colon": b"GET /v1/health HTTP/1.1\r\nnonsense\r\n\r\n",
            "obsolete line folding": b"GET /v1/health HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
            "bare LF": b"GET /v1/health HTTP/1.1\nHost: x\n\n",
            "bare CR": b"GET /v1/health HTTP/1.1\rHost: x\r\r",
            "HTTP/9.9": b"GET /v1/health HTTP/9.9\r\n\r\n",
            "HTTP/1.1 trailing junk": b"GET /v1/health HTTP/1.1 junk\r\n\r\n",
            "no version": b"GET /v1/health\r\n\r\n",
            "lowercase method": b"get /v1/health HTTP/1.1\r\n\r\n",
            "absolute form": b"GET http://evil.example/v1/health HTTP/1.1\r\n\r\n",
            "asterisk form": b"OPTIONS * HTTP/1.1\r\n\r\n",
            "authority form": b"CONNECT localhost:80 HTTP/1.1\r\n\r\n",
            "negative length": head + b"Content-Length: -1\r\n\r\n[]",
            "non-numeric length": head + b"Content-Length: abc\r\n\r\n[]",
            "float length": head + b"Content-Length: 1e3\r\n\r\n[]",
            "huge length": head + b"Content-Length: 99999999999999999999999\r\n\r\n[]",
            "two lengths": head + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n[]",
            "length and chunked": head
            + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
            "unknown transfer coding": head + b"Transfer-Encoding: gzip\r\n\r\n[]",
            "chunked twice": head
            + b"Transfer-Encoding: chunked, chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
            "bad chunk size": head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n[]\r\n0\r\n\r\n",
            "negative chunk size": head
            + b"Transfer-Encoding: chunked\r\n\r\n-2\r\n[]\r\n0\r\n\r\n",
            "huge chunk size": head
            + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n[]\r\n0\r\n\r\n",
            "chunk without CRLF": head + b"Transfer-Encoding: chunked\r\n\r\n2\r\n[]XX0\r\n\r\n",
            "chunked beyond 1 MiB": head
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"10000\r\n" + b"[" * 0x10000 + b"\r\n" for _ in range(20))
            + b"0\r\n\r\n",
            "gzip garbage": head
            + b"Content-Encoding: gzip\r\nContent-Length: 10\r\n\r\n0123456789",
            "deflate garbage": head
            + b"Content-Encoding: deflate\r\nContent-Length: 10\r\n\r\n0123456789",
            "brotli garbage": head
            + b"Content-Encoding: br\r\nContent-Length: 10\r\n\r\n0123456789",
            "unknown coding": head + b"Content-Encoding: x-hostile\r\nContent-Length: 2\r\n\r\n[]",
        }
        bomb = gzip.compress(b"[" * (64 * MIB), compresslevel=9)
        cases["gzip bomb (64 MiB)"] = (
            head + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb
        )
        nested = gzip.compress(b"[" * (2 * MIB))
        cases["gzip of deep nesting"] = (
            head + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(nested) + nested
        )
        for name, data in cases.items():
            yield Case(name, raw=data)

    def utf8_in_request_line(self) -> Iterator[Case]:
        for n, bad in enumerate(INVALID_UTF8):
            for line in (
                b"GET /v1/" + bad + b" HTTP/1.1",
                b"GET /v1/status?company_id=" + bad + b" HTTP/1.1",
                b"GET /v1/dead-letters?company_id=a" + bad + b"&limit=" + bad + b" HTTP/1.1",
                b"GET /v1/credentials/" + bad + b" HTTP/1.1",
                b"POST /v1/cancel/" + bad + b" HTTP/1.1",
                b"GET /v1/credentials?environment=" + bad + b" HTTP/1.1",
                b"GET /v1/health HTTP/1.1\r\nX-Bad: " + bad,
            ):
                yield Case(
                    f"invalid UTF-8 #{n} in {line[:30]!r}",
                    raw=line + b"\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                )

    # -- request level (aiohttp) ---------------------------------------------------------------

    def unknown_paths(self) -> Iterator[Case]:
        rng = self.rng
        segments = [
            "v1",
            "v2",
            "V1",
            "health",
            "HEALTH",
            "status.json",
            "..",
            "%2e%2e",
            "%2F",
            "etc",
            "passwd",
            "credentials",
            "dead-letters",
            "dead_letters",
            "process;x=1",
            "%00",
            "%FF",
            "%F0%9F%98%80",
            "",
            "~",
            "*",
            "x" * 2000,
        ]
        known = {template.replace("{id}", "") for template in ROUTES}
        for n in range(200):
            path = "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(1, 5)))
            if path in known:
                continue
            method = rng.choice(["GET", "POST", "DELETE"])
            # A POST body that is never valid: a path that normalizes to a route starts nothing.
            body = b'{"dry_run": true, "bad": ' if method == "POST" else None
            yield Case(f"unknown path #{n}", method=method, target=path, body=body)

    def huge_bodies(self) -> Iterator[Case]:
        rng = self.rng
        for template, allowed in ROUTES.items():
            for method in sorted(allowed - {"GET", "DELETE"}):
                for size in (MIB + 1, 2 * MIB, 5 * MIB):
                    filler = rng.choice([b" ", b"[", b'{"a":', b"x"])
                    yield Case(
                        f"{size} bytes to {method} {template}",
                        method=method,
                        target=self.path(template),
                        body=filler * size,
                        headers=(("Content-Type", "application/json"),),
                        # 404: routes that never read a body, answering for an unknown id.
                        expect=frozenset({404, 413}),
                    )
        yield Case(
            "2 MiB to GET /v1/health",
            target="/v1/health",
            body=b" " * (2 * MIB),
            expect=frozenset({200}),
        )

    def deep_nesting(self) -> Iterator[Case]:
        depth = 100_000
        bodies = {
            "arrays": b"[" * depth + b"]" * depth,
            "objects": b'{"a":' * depth + b"1" + b"}" * depth,
            "in a field": b'{"dry_run": true, "company_id": ' + b"[" * depth + b"]" * depth + b"}",
            "unclosed": b"[" * depth,
        }
        for (method, template), _ in _body_fields().items():
            for name, body in bodies.items():
                yield Case(
                    f"deep nesting ({name}) to {method} {template}",
                    method=method,
                    target=self.path(template),
                    body=body,
                    expect=frozenset({400}),
                )

    def utf8_in_bodies(self) -> Iterator[Case]:
        for (method, template), (base, fields) in _body_fields().items():
            for n, bad in enumerate(INVALID_UTF8):
                field = fields[n % len(fields)]
                text = json.dumps({**base, field: "@"}).encode()
                yield Case(
                    f"invalid UTF-8 #{n} in {field} of {method} {template}",
                    method=method,
                    target=self.path(template),
                    body=text.replace(b'"@"', b'"a' + bad + b'"'),
                    expect=frozenset({400}),
                )
            yield Case(
                f"UTF-16 body to {method} {template}",
                method=method,
                target=self.path(template),
                body=json.dumps(base).encode("utf-16"),
                expect=frozenset({400}),
            )

    def query_values(self) -> Iterator[Case]:
        for path, params in QUERY_PARAMS.items():
            for param in params:
                for value in QUERY_VALUES:
                    yield Case(
                        f"GET {path}?{param}={value[:40]}",
                        target=f"{path}?{param}={value}",
                        # An id filter takes prefixes: one that matches nothing is not found.
                        expect=frozenset({200, 400, 404} if param in ID_PARAMS else {200, 400}),
                    )
            yield Case(
                f"GET {path} with every parameter twice",
                target=self._every_param(path),
                expect=frozenset({200, 400, 404}),
            )

    def _every_param(self, path: str) -> str:
        rng = self.rng
        pairs = [
            f"{param}={rng.choice(QUERY_VALUES)}" for param in QUERY_PARAMS[path] for _ in range(2)
        ]
        return f"{path}?{'&'.join(pairs)}"

    def _json_body(self, base: dict[str, Any], field: str, token: str) -> bytes:
        """`base` with `field` set to a raw JSON token (which may be invalid JSON)."""
        text = json.dumps({**base, field: "@@TOKEN@@"})
        return text.replace('"@@TOKEN@@"', token).encode()

    def body_values(self) -> Iterator[Case]:
        for (method, template), (base, fields) in _body_fields().items():
            phase = 2 if template == "/v1/credentials" else 1
            for field in fields:
                tokens = [
                    json.dumps(self._secret(field, value), ensure_ascii=self.rng.random() < 0.5)
                    for value in JSON_VALUES
                ] + list(RAW_TOKENS)
                for token in tokens:
                    body = base
                    if field == "dry_run":
                        # Whatever the value turns into, an unknown key keeps this from running.
                        body = {**base, "hostile_extra": 1}
                    yield Case(
                        f"{method} {template} {field}={token[:40]}",
                        method=method,
                        target=self.path(template),
                        body=self._json_body(body, field, token),
                        headers=(("Content-Type", "application/json"),),
                        phase=phase,
                        expect=frozenset({200, 201, 400, 404, 409}),
                    )

    @staticmethod
    def _secret(field: str, value: Any) -> Any:
        if field in ("client_secret", "app_key") and isinstance(value, str):
            return SECRET_MARK + value
        return value

    def bad_ids(self) -> Iterator[Case]:
        rng = self.rng
        ids = list(BAD_IDS) + [
            quote(rng.choice(["", "-", "{"]) + self.uuid()[: rng.randint(0, 40)] + "!", safe="")
            for _ in range(5)
        ]
        for template, allowed in ROUTES.items():
            if "{id}" not in template:
                continue
            for method in sorted(allowed):
                for bad in ids:
                    body = b'{"company_name": "x"}' if method == "PATCH" else None
                    yield Case(
                        f"{method} {template} id={bad[:40]}",
                        method=method,
                        target=template.replace("{id}", bad),
                        body=body,
                        expect=frozenset({400, 404, 405}),
                    )

    def duplicate_keys(self) -> Iterator[Case]:
        for (method, template), (base, fields) in _body_fields().items():
            for field in fields:
                if field == "dry_run":
                    text = '{"dry_run": true, "dry_run": true, "dry_run": "yes", "x": 1}'
                else:
                    inner = json.dumps(base)[1:-1]
                    sep = ", " if inner else ""
                    text = f'{{{inner}{sep}"{field}": 1, "{field}": "x", "{field}": null}}'
                yield Case(
                    f"duplicate {field} in {method} {template}",
                    method=method,
                    target=self.path(template),
                    body=text.encode(),
                    phase=2 if template == "/v1/credentials" else 1,
                )

    def content_types(self) -> Iterator[Case]:
        types = (
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "application/json; charset=latin-1",
            "application/json; charset=utf-16",
            "application/octet-stream",
            "image/png",
            "*/*",
            "application/json;;;",
            "",
        )
        for content_type in types:
            for target in ("/v1/process", "/v1/retry"):
                for body in (b'{"dry_run": true}', b"dry_run=true", b"--xyz--\r\n"):
                    yield Case(
                        f"{content_type or 'empty content type'} to POST {target}",
                        method="POST",
                        target=target,
                        body=body,
                        headers=(("Content-Type", content_type),),
                        expect=frozenset({200, 400}),
                    )

    def extra_keys(self) -> Iterator[Case]:
        extras = (
            {"__proto__": {"admin": True}},
            {"constructor": 1},
            {"dryRun": True},
            {"DRY_RUN": True},
            {"dry_run ": True},
            {"": 1},
            {"\u0000": 1},
            {"client_secret": SECRET_MARK + "-extra"},
            {"id": "00000000-0000-0000-0000-000000000000"},
            {"status": "active"},
        )
        for (method, template), (base, fields) in _body_fields().items():
            for extra in extras:
                if set(extra) & set(fields):
                    continue
                yield Case(
                    f"extra {next(iter(extra))!r} in {method} {template}",
                    method=method,
                    target=self.path(template),
                    body=json.dumps({**base, **extra}).encode(),
                    phase=2 if template == "/v1/credentials" else 1,
                    expect=frozenset({400}),
                )


# -- talking to the daemon -------------------------------------------------------------------------


async def _read_answer(reader: asyncio.StreamReader, *, head_request: bool) -> Answer | None:
    """One HTTP response (interim 1xx ones skipped), or None when the daemon just closed."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if error.partial:  # a daemon that closed mid-answer
                raise AssertionError(f"a partial answer: {error.partial[:200]!r}") from None
            return None
        except ConnectionError:
            return None
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in lines:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        if 100 <= status < 200:
            continue
        if head_request:
            body = b""
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int((await reader.readline()).split(b";")[0], 16):
                body += await reader.readexactly(size)
                await reader.readline()
            await reader.readline()
        else:
            body = await reader.read()
        return Answer(status, headers.get("content-type", ""), body)


async def raw_exchange(socket_path: Path, case: Case) -> Answer | None:
    assert case.raw is not None
    reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=4 * MIB)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(case.raw)
            await writer.drain()
            if not case.complete:
                writer.write_eof()
        return await asyncio.wait_for(
            _read_answer(reader, head_request=case.method == "HEAD"), ANSWER_SECONDS
        )
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def http_exchange(session: aiohttp.ClientSession, case: Case) -> Answer:
    url = URL(f"http://localhost{case.target}", encoded=True)
    # Large bodies as a stream: bytes that big would hold up the test's own event loop.
    data = io.BytesIO(case.body) if case.body and len(case.body) > MIB else case.body
    async with session.request(case.method, url, data=data, headers=dict(case.headers)) as response:
        body = await response.read()
        return Answer(response.status, response.headers.get("Content-Type", ""), body)


def check(case: Case, answer: Answer | None) -> str | None:
    """What is wrong with the daemon's answer to a case, if anything."""
    if answer is None:  # closed without answering: only right for a request it never completed
        return None if not case.complete else "the daemon closed the connection without answering"
    if answer.status >= 500:
        return f"HTTP {answer.status}: {answer.body[:300]!r}"
    if case.expect and answer.status not in case.expect:
        return f"HTTP {answer.status}, expected one of {sorted(case.expect)}: {answer.body[:200]!r}"
    if SECRET_MARK.encode() in answer.body:
        return "a secret came back"
    if answer.status < 400 or case.method == "HEAD":  # nothing to check / no body to a HEAD
        return None
    try:
        document = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return f"HTTP {answer.status}, not JSON ({answer.content_type}): {answer.body[:200]!r}"
    if not (
        isinstance(document, dict)
        and set(document) == {"message", "code"}
        and isinstance(document["message"], str)
        and document["message"]
        and document["code"] in ERROR_CODES
    ):
        return f"HTTP {answer.status}, not an error body: {document!r:.300}"
    if "application/json" not in answer.content_type:
        return f"HTTP {answer.status} with content type {answer.content_type!r}"
    return None


async def send_all(socket_path: Path, cases: list[Case]) -> tuple[list[str], int]:
    """Every case, CONCURRENCY at a time: the problems found, each naming its case, and how many
    cases were answered (rather than closed)."""
    problems: list[str] = []
    answered = 0
    gate = asyncio.Semaphore(CONCURRENCY)
    connector = aiohttp.UnixConnector(path=str(socket_path), limit=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=ANSWER_SECONDS * 2)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(case: Case) -> None:
            nonlocal answered
            async with gate:
                try:
                    if case.raw is not None:
                        answer = await raw_exchange(socket_path, case)
                    else:
                        answer = await http_exchange(session, case)
                except Exception as error:  # every failure is a finding
                    problems.append(f"{case.name}: {type(error).__name__}: {error}")
                    return
                answered += answer is not None
                problem = check(case, answer)
                if problem:
                    problems.append(f"{case.name}: {problem}")

        for phase in (1, 2):
            await asyncio.gather(*(one(case) for case in cases if case.phase == phase))
    return problems, answered


# -- the test --------------------------------------------------------------------------------------


@pytest.fixture
async def daemon(database_dsn: str) -> AsyncIterator[DaemonProcess]:
    workdir = Path(tempfile.mkdtemp(prefix="stsync-hostile-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    try:
        async with Sandbox(SandboxConfig()) as sandbox:
            settings = daemon_settings(sandbox, database_dsn, write_key(workdir))
            process = await DaemonProcess(workdir, settings).start()
            try:
                yield process
            finally:
                await process.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def log_problems(daemon: DaemonProcess) -> list[str]:
    """Log lines that must not be there: critical ones, tracebacks, our secret."""
    out = []
    for line in daemon.log.read_bytes().splitlines():
        text = line.decode("utf-8", "replace")
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = {}
        bad = record.get("level") == "CRITICAL" or "exc" in record
        if bad or "Traceback" in text or SECRET_MARK in text:
            out.append(text[:500])
    return out


async def test_thousands_of_hostile_requests_get_4xx_and_the_daemon_stays_well(
    daemon: DaemonProcess,
) -> None:
    cases = Generator(SEED).cases()
    assert len(cases) >= 2000, len(cases)
    problems, answered = await send_all(daemon.socket, cases)
    assert not problems, f"seed {SEED}: {len(problems)} problems:\n" + "\n".join(problems[:60])
    assert answered >= 0.9 * len(cases), f"only {answered} of {len(cases)} answered"

    assert daemon.poll() is None, "the daemon exited"
    status, health = await daemon.request("GET", "/v1/health")
    assert status == 200 and health["status"] == "ok", health
    assert health["running_runs"] == 0 and health["running_syncs"] == 0
    status, runs = await daemon.request("GET", "/v1/runs")
    assert status == 200 and runs["runs"] == [], "a hostile request started a run"
    bad = log_problems(daemon)
    assert not bad, f"seed {SEED}: the daemon logged:\n" + "\n".join(bad[:30])
