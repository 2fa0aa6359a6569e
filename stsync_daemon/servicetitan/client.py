"""The ServiceTitan HTTP client: one shared session, tokens, rate limits, retries and error mapping.

It knows nothing of PostgreSQL: it turns ServiceTitan's answers into `ExportPage`s and counts, and
its failures into the project's exception hierarchy, with messages an operator can act on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import random
import time
import urllib.request
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar

import aiohttp
import orjson
from yarl import URL

from .. import cycles
from ..config import ServiceTitanConfig
from ..enums import DataType, Environment
from ..errors import (
    ApiError,
    AppKeyError,
    InvalidCredentialsError,
    NetworkError,
    RateLimitError,
    StsyncError,
    ValidationFailure,
)
from ..logs import log_event
from .auth import TokenProvider
from .exceptions import ExportTokenInvalidError
from .models import CredentialAccess, ExportPage, UnreadableRecord
from .observer import ClientObserver, NullObserver
from .ratelimit import Clock, RateLimiter, Sleep
from .retry import RetryPolicy, parse_retry_after
from .salvage import salvage_page

_log = logging.getLogger(__name__)

T = TypeVar("T")

_EXPORT_PATHS = {
    DataType.CUSTOMERS: "/crm/v2/tenant/{tenant}/export/customers",
    DataType.INVOICES: "/accounting/v2/tenant/{tenant}/export/invoices",
}
_LIST_PATHS = {
    DataType.CUSTOMERS: "/crm/v2/tenant/{tenant}/customers",
    DataType.INVOICES: "/accounting/v2/tenant/{tenant}/invoices",
}
# Human wording of each endpoint label, for messages.
_WHAT = {
    "token": "a sign-in (token) request",
    "export_customers": "the customers export",
    "export_invoices": "the invoices export",
    "list_customers": "the customers list",
    "list_invoices": "the invoices list",
}
# What makes a list return inactive records too: the customers list hides them by default, and the
# invoices list says nothing of its default (`activeState`), so both ask.
_EVERY_RECORD: dict[DataType, dict[str, str]] = {
    DataType.CUSTOMERS: {"active": "Any"},
    DataType.INVOICES: {"activeState": "All"},
}
_BAD_CLIENT_ERRORS = {"invalid_client", "unauthorized_client", "invalid_grant"}
# Answers in a row that say "more" but give back the token they were asked with: the export is stuck.
_MAX_REPEATED_TOKENS = 3
_UPDATE_HINT = "update it with `stsyncctl credentials update`"


@dataclass(frozen=True)
class _Response:
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class _Decoded:
    """A decoded answer, its size, and the export records that could not be decoded."""

    doc: Any
    nbytes: int
    unreadable: tuple[UnreadableRecord, ...] = ()


@dataclass(frozen=True)
class _Problem:
    """The useful parts of a problem+json (or OAuth) error body; everything optional."""

    title: str | None = None
    trace_id: str | None = None
    errors: str | None = None
    oauth_error: str | None = None

    @classmethod
    def parse(cls, body: bytes) -> _Problem:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return cls()
        if not isinstance(doc, dict):
            return cls()
        title = doc.get("title")
        trace = doc.get("traceId")
        oauth = doc.get("error")
        errors = doc.get("errors")
        detail = None
        if isinstance(errors, dict) and errors:
            parts = []
            for key, messages in list(errors.items())[:5]:
                text = "; ".join(map(str, messages)) if isinstance(messages, list) else messages
                parts.append(f"{key}: {text}")
            detail = _clip(", ".join(parts), 400)
        return cls(
            title=_clip(str(title), 300) if title else None,
            trace_id=_clip(str(trace), 100) if trace else None,
            errors=detail,
            oauth_error=_clip(str(oauth), 60) if oauth else None,
        )

    def trace(self) -> str:
        return f"traceId {self.trace_id}" if self.trace_id else "no traceId"

    def summary(self) -> str:
        """`'title' (field: message…; traceId …)` for messages."""
        text = f"'{self.title}'" if self.title else "no explanation"
        extra = f"{self.errors}; " if self.errors else ""
        return f"{text} ({extra}{self.trace()})"

    def mentions_export_token(self) -> bool:
        """Whether a 400 is about the `from` continuation token rather than anything else."""
        if self.errors and self.errors.lower().startswith("from:"):
            return True
        title = (self.title or "").lower()
        about_token = any(w in title for w in ("continu", "token", "'from'", '"from"', " from "))
        bad = any(w in title for w in ("invalid", "expired", "not valid", "malformed", "unknown"))
        return about_token and bad


class _Retry(Exception):
    """An attempt failed in a way worth repeating; `make` builds the error if retries run out."""

    def __init__(
        self,
        reason: str,
        make: Callable[[str], StsyncError],
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.make = make
        self.retry_after = retry_after
        self.status = status


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as ServiceTitan's date-time parameters expect."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime: pass an aware UTC datetime")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _digest(secret: str) -> str:
    """A short fingerprint, so limiter keys never hold the app key itself."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class ServiceTitanClient:
    """Shares one HTTP session, the token cache and the rate limiters among all tenants.

    Use as `async with ServiceTitanClient(config) as st:` then `st.tenant(access)`; `clock`
    (monotonic seconds), `sleep` and `rng` are injectable so tests drive backoff without waiting.
    """

    def __init__(
        self,
        config: ServiceTitanConfig,
        *,
        observer: ClientObserver | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._observer: ClientObserver = observer or NullObserver()
        self._session = session
        self._owns_session = session is None
        self._clock: Clock = clock or time.monotonic
        self._sleep: Sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._policy = RetryPolicy(
            max_attempts=config.max_attempts, max_total_seconds=config.max_retry_seconds
        )
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout_seconds)
        self._tokens: dict[tuple[Environment, str, int], TokenProvider] = {}
        self._limiters: dict[tuple[Environment, str, int], RateLimiter] = {}
        # Digests of app keys ServiceTitan has accepted since start-up (see `_refused_twice`).
        self._app_keys_proven: set[str] = set()
        self._proxies: dict[tuple[str, str], _Proxy] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<ServiceTitanClient tenants={len(self._tokens)} closed={self._closed}>"

    async def __aenter__(self) -> Self:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop token fetches under way and close the session if this client created it."""
        self._closed = True
        for provider in self._tokens.values():
            provider.cancel()
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def tenant(self, access: CredentialAccess) -> TenantClient:
        """A cheap view for one credential; the token cache and limiter are shared across views."""
        env = access.environment
        token_key = (env, access.client_id, access.tenant_id)
        tokens = self._tokens.get(token_key)
        if tokens is None:
            tokens = TokenProvider(
                self._fetch_token,
                clock=self._clock,
                margin_seconds=self._config.token_refresh_margin_seconds,
            )
            self._tokens[token_key] = tokens
        limit_key = (env, _digest(access.app_key.get_secret_value()), access.tenant_id)
        limiter = self._limiters.get(limit_key)
        if limiter is None:
            limiter = RateLimiter(
                self._config.requests_per_second, clock=self._clock, sleep=self._sleep
            )
            self._limiters[limit_key] = limiter
        return TenantClient(self, access, tokens, limiter)

    # -- plumbing -------------------------------------------------------------------------------

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("ServiceTitanClient is closed")
        if self._session is None:
            # Proxies come from `_proxy_for`, not trust_env: aiohttp's looks them up (and parses
            # ~/.netrc) in a thread for every request.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._config.connections),
                timeout=self._timeout,
            )
            self._owns_session = True
        return self._session

    def _proxy_for(self, url: str) -> _Proxy:
        """The proxy that HTTP_PROXY / HTTPS_PROXY / NO_PROXY name for `url`'s host, looked up
        once per scheme and host (the environment of a process does not change)."""
        target = URL(url)
        key = (target.scheme, target.host or "")
        found = self._proxies.get(key)
        if found is None:
            found = _env_proxy(target)
            self._proxies[key] = found
        return found

    async def _send(
        self,
        access: CredentialAccess,
        endpoint: str,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> _Response:
        """One HTTP exchange, body read in full up to the size cap; network failures become a
        retryable `_Retry`, a body over the cap a permanent `ApiError`."""
        session = self._ensure_session()
        env = access.environment
        started = self._clock()
        limit = self._config.max_response_bytes
        proxy = self._proxy_for(url)
        if proxy.headers and url.startswith("http://"):
            # No tunnel for plain HTTP: the request itself carries the proxy's credentials.
            headers = {**headers, **proxy.headers}
        try:
            async with session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                proxy=proxy.url,
                proxy_headers=proxy.headers,
            ) as resp:
                body = await _read_capped(resp, limit)
                if body is None:
                    self._observer.request_finished(
                        env, endpoint, resp.status, self._clock() - started
                    )
                    raise self._too_large(access, endpoint, resp.status, limit)
                response = _Response(resp.status, resp.reason or "", resp.headers, body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._observer.request_finished(env, endpoint, None, self._clock() - started)
            problem = _describe_network_error(exc, self._config.request_timeout_seconds)
            host = URL(url).host or url
            what = _WHAT[endpoint]

            def make(suffix: str) -> StsyncError:
                return NetworkError(
                    f"Could not reach ServiceTitan ({host}) for {what} ({access.describe()}): "
                    f"{problem}{suffix}. Check this machine's network, DNS and proxy; "
                    "the sync will be retried later."
                )

            raise _Retry("network", make) from exc
        self._observer.request_finished(env, endpoint, response.status, self._clock() - started)
        return response

    async def _with_retries(
        self,
        access: CredentialAccess,
        endpoint: str,
        attempt_once: Callable[[], Awaitable[T]],
        limiter: RateLimiter | None = None,
    ) -> T:
        """Repeat `attempt_once` on transient failures, with jittered backoff, within bounds."""
        env = access.environment
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await attempt_once()
            except _Retry as retry:
                elapsed = self._clock() - started
                if retry.retry_after is not None:
                    delay = self._policy.honour(retry.retry_after, self._rng)
                else:
                    delay = self._policy.backoff(attempt, self._rng)
                over_time = elapsed + delay > self._policy.max_total_seconds
                if attempt >= self._policy.max_attempts or over_time:
                    log_event(
                        _log,
                        logging.WARNING,
                        "servicetitan.gave_up",
                        credential_id=access.credential_id,
                        environment=env.value,
                        endpoint=endpoint,
                        reason=retry.reason,
                        status=retry.status,
                        attempts=attempt,
                        elapsed_seconds=round(elapsed, 3),
                    )
                    suffix = (
                        f" (gave up after {attempt} attempt{'s' if attempt > 1 else ''}"
                        f" in {elapsed:.0f} s)"
                    )
                    raise retry.make(suffix) from retry.__cause__
                self._observer.retried(env, retry.reason)
                if retry.reason == "429":
                    self._observer.rate_limit_waited(env, delay, "429")
                    if limiter is not None:
                        limiter.hold_until(self._clock() + delay)
                log_event(
                    _log,
                    logging.INFO,
                    "servicetitan.retry",
                    credential_id=access.credential_id,
                    environment=env.value,
                    endpoint=endpoint,
                    reason=retry.reason,
                    status=retry.status,
                    attempt=attempt,
                    delay_seconds=round(delay, 3),
                )
                await self._sleep(delay)

    # -- tokens ---------------------------------------------------------------------------------

    async def _fetch_token(self, access: CredentialAccess) -> tuple[str, float]:
        """POST the client credentials; retried like any call, rejected secrets are permanent."""
        env = access.environment
        url = self._config.environments.urls(env).auth_url + "/connect/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": access.client_id,
            "client_secret": access.client_secret.get_secret_value(),
        }

        async def attempt() -> tuple[str, float]:
            resp = await self._send(
                access, "token", "POST", url, headers={"Accept": "application/json"}, data=form
            )
            return self._read_token(access, resp)

        try:
            result = await self._with_retries(access, "token", attempt)
        except Exception as exc:
            self._observer.token_refreshed(env, "error")
            log_event(
                _log,
                logging.WARNING,
                "servicetitan.token_failed",
                credential_id=access.credential_id,
                environment=env.value,
                error_category=getattr(exc, "category", "unexpected"),
            )
            raise
        self._observer.token_refreshed(env, "ok")
        log_event(
            _log,
            logging.DEBUG,
            "servicetitan.token_refreshed",
            credential_id=access.credential_id,
            environment=env.value,
            expires_in_seconds=result[1],
        )
        return result

    def _read_token(self, access: CredentialAccess, resp: _Response) -> tuple[str, float]:
        status = resp.status
        if status == 200:
            try:
                doc = orjson.loads(resp.body)
            except orjson.JSONDecodeError:
                doc = None
            token = doc.get("access_token") if isinstance(doc, dict) else None
            lifetime = doc.get("expires_in", 900) if isinstance(doc, dict) else None
            if (
                isinstance(token, str)
                and token
                and isinstance(lifetime, int | float)
                and not isinstance(lifetime, bool)
                and lifetime > 0
            ):
                return token, float(lifetime)
            raise self._malformed(access, "token", status)
        problem = _Problem.parse(resp.body)
        if status in (400, 401, 403) and (
            status != 400
            or problem.oauth_error is None
            or problem.oauth_error in _BAD_CLIENT_ERRORS
        ):
            code = f" ({status} {problem.oauth_error})" if problem.oauth_error else f" ({status})"
            raise InvalidCredentialsError(
                f"ServiceTitan rejected {access.describe()}{code}: the client secret is wrong or "
                f"was revoked, or the client id belongs to the other environment; {_UPDATE_HINT}."
            )
        self._raise_for_status(access, "token", resp, problem, limiter=None)

    # -- API ------------------------------------------------------------------------------------

    async def _get_json(
        self,
        tenant: TenantClient,
        endpoint: str,
        path: str,
        params: Mapping[str, str],
        *,
        export: bool = False,
    ) -> _Decoded:
        """GET with token, rate limit and retries; returns the decoded body and its size."""
        access = tenant.access
        url = self._config.environments.urls(access.environment).api_url + path.format(
            tenant=access.tenant_id
        )
        app_key = access.app_key.get_secret_value()
        key_digest = _digest(app_key)

        async def attempt() -> _Decoded:
            # One refresh per attempt on 401: the token may have expired or been revoked early.
            for refreshed in (False, True):
                token = await tenant._tokens.get(access)
                waited = await tenant._limiter.acquire()
                if waited > 0:
                    self._observer.rate_limit_waited(access.environment, waited, "proactive")
                resp = await self._send(
                    access,
                    endpoint,
                    "GET",
                    url,
                    params=params,
                    headers={
                        "Authorization": token,
                        "ST-App-Key": app_key,
                        "Accept": "application/json",
                    },
                )
                if resp.status != 401:
                    if resp.status < 300:
                        self._app_keys_proven.add(key_digest)
                    return self._read_api(access, endpoint, resp, tenant._limiter, export=export)
                if refreshed:
                    raise self._refused_twice(access, _Problem.parse(resp.body), key_digest)
                tenant._tokens.invalidate(token)
                self._observer.retried(access.environment, "401")
                log_event(
                    _log,
                    logging.INFO,
                    "servicetitan.token_rejected",
                    credential_id=access.credential_id,
                    environment=access.environment.value,
                    endpoint=endpoint,
                )
            raise AssertionError("unreachable")

        return await self._with_retries(access, endpoint, attempt, tenant._limiter)

    def _refused_twice(
        self, access: CredentialAccess, problem: _Problem, key_digest: str
    ) -> StsyncError:
        """A 401 even with a token issued a moment ago: the app key, or this tenant's grant.

        The daemon's own app key is to blame when ServiceTitan names it, or when it has never worked
        for any tenant since start-up: that is the operator's configuration, and no credential is
        marked for it. Once it has worked elsewhere, the refusal is this tenant's.
        """
        names_app_key = "st-app-key" in (problem.errors or "").lower()
        if not access.own_app_key and (names_app_key or key_digest not in self._app_keys_proven):
            return AppKeyError(
                f"ServiceTitan refused stsync's app key for {access.describe()} (401 with a fresh "
                f"token, {problem.trace()}): check [servicetitan] app_key or app_key_file (the "
                "ST-App-Key of your ServiceTitan application) and restart stsyncd. No credential "
                "was marked; syncs resume once the key is right."
            )
        if names_app_key:
            return InvalidCredentialsError(
                f"ServiceTitan refused the app key stored with {access.describe()} (401, "
                f"{problem.trace()}); set it again with `stsyncctl credentials update --app-key-file`."
            )
        return InvalidCredentialsError(
            f"ServiceTitan refused a freshly issued token for {access.describe()} "
            f"(401 twice, {problem.trace()}): the tenant may have revoked the app's access while "
            f"the app key works for other tenants; ask the tenant's admin, or {_UPDATE_HINT}."
        )

    def _read_api(
        self,
        access: CredentialAccess,
        endpoint: str,
        resp: _Response,
        limiter: RateLimiter,
        *,
        export: bool,
    ) -> _Decoded:
        if 200 <= resp.status < 300:
            try:
                with cycles.paused():
                    return _Decoded(orjson.loads(resp.body), len(resp.body))
            except orjson.JSONDecodeError:
                salvaged = salvage_page(resp.body) if export else None
                if salvaged is None:
                    raise self._malformed(access, endpoint, resp.status) from None
            doc, unreadable = salvaged
            log_event(
                _log,
                logging.WARNING,
                "servicetitan.records_unreadable",
                credential_id=access.credential_id,
                environment=access.environment.value,
                endpoint=endpoint,
                records=len(unreadable),
                record_ids=[u.record_id for u in unreadable[:10]],
                reasons=sorted({u.reason for u in unreadable}),
            )
            return _Decoded(doc, len(resp.body), unreadable)
        problem = _Problem.parse(resp.body)
        what = _WHAT[endpoint]
        if resp.status == 403:
            raise InvalidCredentialsError(
                f"ServiceTitan refused access to tenant {access.tenant_id} in "
                f"{access.environment.value} for client id '{access.client_label}' (403 "
                f"{problem.summary()}): the app is not connected to this tenant or may not read "
                f"{what.removeprefix('the ')}; ask the tenant's ServiceTitan admin to connect the "
                f"app and grant access, or if the tenant id is wrong, {_UPDATE_HINT}."
            )
        if export and resp.status == 400 and problem.mentions_export_token():
            raise ExportTokenInvalidError(
                f"ServiceTitan refused the stored continuation token of {what} "
                f"({access.describe()}, 400 {problem.summary()}); the export must restart from "
                "the last committed modification date.",
                status=400,
                trace_id=problem.trace_id,
            )
        self._raise_for_status(access, endpoint, resp, problem, limiter=limiter)

    def _raise_for_status(
        self,
        access: CredentialAccess,
        endpoint: str,
        resp: _Response,
        problem: _Problem,
        *,
        limiter: RateLimiter | None,
    ) -> NoReturn:
        """Map a non-success status shared by the token and API endpoints."""
        status = resp.status
        what = _WHAT[endpoint]
        head = f"ServiceTitan answered {status} {resp.reason}".rstrip()
        if status == 429:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), problem.title)

            def rate_limited(suffix: str) -> StsyncError:
                return RateLimitError(
                    f"{head} for {what} ({access.describe()}, {problem.trace()}){suffix}: "
                    "the tenant's request limit is used up, perhaps by another application "
                    "with the same app key; the sync will be retried later."
                )

            raise _Retry("429", rate_limited, retry_after=retry_after, status=status)
        if status == 409 or status >= 500:
            advice = (
                "ServiceTitan is in maintenance"
                if status == 409
                else "ServiceTitan is failing or overloaded"
            )

            def server_failed(suffix: str) -> StsyncError:
                return ApiError(
                    f"{head} for {what} ({access.describe()}, {problem.summary()}){suffix}: "
                    f"{advice}; the sync will be retried later.",
                    status=status,
                    trace_id=problem.trace_id,
                    transient=True,
                )

            reason = "409" if status == 409 else "5xx"
            # A 503 (or any of these) may say when to come back; only the header counts here, as
            # a failure's title is no promise of a delay.
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), None)
            raise _Retry(reason, server_failed, retry_after=retry_after, status=status)
        if status == 404:
            advice = (
                f"check that {access.tenant_id} is the right tenant id for this credential; "
                f"if not, {_UPDATE_HINT}"
            )
        elif status == 400:
            advice = "this is most likely a bug in stsync: report it with the traceId"
        else:
            advice = "if it persists, report it to ServiceTitan support with the traceId"
        raise ApiError(
            f"{head} for {what} ({access.describe()}): {problem.summary()}; {advice}.",
            status=status,
            trace_id=problem.trace_id,
            transient=False,
        )

    def _too_large(
        self, access: CredentialAccess, endpoint: str, status: int, limit: int
    ) -> ApiError:
        return ApiError(
            f"ServiceTitan's answer ({status}) to {_WHAT[endpoint]} ({access.describe()}) is larger "
            f"than {limit} bytes ({limit / 2**20:.4g} MiB), the limit set by [servicetitan] "
            "max_response_bytes; it was not read further. Raise the limit if pages this large are "
            "expected; otherwise a proxy or the API is sending far more than a page.",
            status=status,
            transient=False,
        )

    def _malformed(self, access: CredentialAccess, endpoint: str, status: int) -> _Retry:
        what = _WHAT[endpoint]

        def make(suffix: str) -> StsyncError:
            return NetworkError(
                f"ServiceTitan's answer ({status}) to {what} ({access.describe()}) was cut short "
                f"or is not valid JSON{suffix}; a proxy or an unstable connection may be in the "
                "way. The sync will be retried later."
            )

        return _Retry("network", make, status=status)


class TenantClient:
    """The API as seen by one credential: exports, counts and a credential check."""

    def __init__(
        self,
        client: ServiceTitanClient,
        access: CredentialAccess,
        tokens: TokenProvider,
        limiter: RateLimiter,
    ) -> None:
        self._client = client
        self.access = access
        self._tokens = tokens
        self._limiter = limiter

    def __repr__(self) -> str:
        a = self.access
        return (
            f"<TenantClient credential={a.credential_id} {a.environment.value} "
            f"tenant={a.tenant_id}>"
        )

    async def export(
        self, data_type: DataType, start: str | None, *, include_recent_changes: bool = True
    ) -> AsyncGenerator[ExportPage, None]:
        """Follow `continueFrom` while `hasMore`, one page in memory at a time.

        An async generator (an `AsyncIterator` with `aclose()`), so a consumer stopping early
        can close it at once. An API that keeps answering "more" with the token it was asked with
        would be followed forever: after a few such answers in a row it is an `ApiError`.
        """
        cursor = start
        repeats = 0
        while True:
            page = await self.fetch_export_page(
                data_type, cursor, include_recent_changes=include_recent_changes
            )
            if page.has_more and page.continue_from == cursor:
                repeats += 1
                if repeats >= _MAX_REPEATED_TOKENS:
                    raise self._stuck_error(f"export_{data_type.value}", repeats)
            else:
                repeats = 0
            yield page
            if not page.has_more:
                return
            cursor = page.continue_from

    async def fetch_export_page(
        self, data_type: DataType, start: str | None, *, include_recent_changes: bool = True
    ) -> ExportPage:
        """One export request from `start`: a continuation token, a date, or None (from scratch)."""
        params = {"includeRecentChanges": "true" if include_recent_changes else "false"}
        if start is not None:
            params["from"] = start
        endpoint = f"export_{data_type.value}"
        decoded = await self._client._get_json(
            self, endpoint, _EXPORT_PATHS[data_type], params, export=True
        )
        doc, records, has_more = self._page(endpoint, decoded)
        continue_from = doc.get("continueFrom")
        if continue_from is not None and not isinstance(continue_from, str):
            raise self._shape_error(endpoint, "'continueFrom' is not a string")
        if has_more and not continue_from:
            raise self._shape_error(endpoint, "'hasMore' is true but 'continueFrom' is empty")
        return ExportPage(
            records=records,
            continue_from=continue_from,
            has_more=has_more,
            nbytes=decoded.nbytes,
            unreadable=decoded.unreadable,
        )

    async def fetch_list_page(self, data_type: DataType, number: int, page_size: int) -> ExportPage:
        """Page `number` of the whole list in id order: what a backfill reads, several at a time.

        Inactive records included (see `_EVERY_RECORD`). Records created meanwhile get higher ids
        and land after the pages a backfill planned; the export that follows it brings them.
        """
        params = {"page": str(number), "pageSize": str(page_size), "sort": "+Id"}
        params.update(_EVERY_RECORD[data_type])
        endpoint = f"list_{data_type.value}"
        decoded = await self._client._get_json(
            self, endpoint, _LIST_PATHS[data_type], params, export=True
        )
        _, records, has_more = self._page(endpoint, decoded)
        return ExportPage(
            records=records,
            continue_from=None,
            has_more=has_more,
            nbytes=decoded.nbytes,
            unreadable=decoded.unreadable,
            number=number,
        )

    async def count_changed(self, data_type: DataType, since: datetime | None) -> int:
        """Estimate the records changed since `since` (all when None) from the list's totalCount."""
        params = {"pageSize": "1", "includeTotal": "true"}
        if since is not None:
            params["modifiedOnOrAfter"] = _iso_utc(since)
        params.update(_EVERY_RECORD[data_type])
        endpoint = f"list_{data_type.value}"
        doc = (await self._client._get_json(self, endpoint, _LIST_PATHS[data_type], params)).doc
        total = doc.get("totalCount") if isinstance(doc, dict) else None
        if not isinstance(total, int) or isinstance(total, bool):
            raise self._shape_error(endpoint, "'totalCount' is missing")
        return total

    async def check(self) -> None:
        """Test the credential: a fresh token, then one customers list page."""
        await self._tokens.get(self.access, fresh=True)
        await self._client._get_json(
            self,
            "list_customers",
            _LIST_PATHS[DataType.CUSTOMERS],
            {"pageSize": "1", "active": "Any"},
        )

    def _page(
        self, endpoint: str, decoded: _Decoded
    ) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
        """An export or list page's envelope, checked: the body, its `data` and its `hasMore`."""
        doc = decoded.doc
        if not isinstance(doc, dict):
            raise self._shape_error(endpoint, "the body is not an object")
        records, has_more = doc.get("data"), doc.get("hasMore")
        if not isinstance(records, list):
            raise self._shape_error(endpoint, "'data' is not a list")
        if not isinstance(has_more, bool):
            raise self._shape_error(endpoint, "'hasMore' is not true or false")
        return doc, records, has_more

    def _stuck_error(self, endpoint: str, repeats: int) -> ApiError:
        return ApiError(
            f"ServiceTitan repeats its continuation token for {_WHAT[endpoint]} "
            f"({self.access.describe()}): {repeats} answers in a row said there is more but gave "
            "back the token they were asked with, so the export cannot advance. The sync stopped "
            "rather than ask again until its timeout; if this persists, report it to ServiceTitan "
            "support with the time of this sync.",
            status=200,
            transient=False,
        )

    def _shape_error(self, endpoint: str, problem: str) -> ValidationFailure:
        return ValidationFailure(
            f"ServiceTitan's answer to {_WHAT[endpoint]} ({self.access.describe()}) does not have "
            f"the expected shape: {problem}. ServiceTitan may have changed its API; report it."
        )


@dataclass(frozen=True)
class _Proxy:
    url: URL | None = None
    headers: Mapping[str, str] | None = None  # Proxy-Authorization for CONNECT (never logged)


def _env_proxy(target: URL) -> _Proxy:
    """As curl and aiohttp read the environment: `<scheme>_proxy` unless NO_PROXY names the host.
    Only http:// proxies (HTTPS is tunnelled through them with CONNECT); credentials may be in
    the proxy's URL."""
    if target.host is None or urllib.request.proxy_bypass(target.host):
        return _Proxy()
    value = urllib.request.getproxies().get(target.scheme)
    if not value:
        return _Proxy()
    proxy = URL(value)
    if proxy.scheme != "http":
        _log.warning(
            "ignoring the %s proxy for %s requests: only http:// proxy URLs are supported",
            proxy.scheme or "schemeless",
            target.scheme,
        )
        return _Proxy()
    headers = None
    if proxy.user is not None:
        pair = f"{proxy.user}:{proxy.password or ''}".encode()
        headers = {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode()}
    return _Proxy(proxy.with_user(None), headers)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to hold more than `limit` bytes.

    A declared length over the limit fails before reading. A declared length within it is read in
    one go (the export's hot path): aiohttp reads no more than it. A body without one, or a
    compressed one (its length is not the decoded size), is read in chunks and counted as decoded.
    """
    length = resp.content_length
    if length is not None and length > limit:
        return None
    encoding = resp.headers.get(aiohttp.hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if length is not None and encoding == "identity":
        return await resp.read()
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _describe_network_error(exc: BaseException, timeout: float) -> str:
    """A short, secret-free description of a transport failure."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"no complete answer within {timeout:.0f} s"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection was cut in the middle of the answer"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    text = str(exc)
    return f"{type(exc).__name__}: {_clip(text, 200)}" if text else type(exc).__name__
