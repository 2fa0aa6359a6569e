"""The control socket's HTTP server: aiohttp on a Unix socket, peers checked by `access`.

Handlers translate between the protocol and the daemon's parts; they hold no state of their own.
Errors become `{"message", "code"}` with a 4xx/5xx status and never disturb the daemon: requests
aiohttp cannot even parse included, each costing one warning line rather than a traceback. A 503
means the database is unavailable, never that a value was bad (values are checked before they
reach PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from ..enums import CredentialStatus
from ..errors import ConflictError, NotFoundError, StsyncError
from ..limits import RUNS_LIMIT_DEFAULT, RUNS_LIMIT_MAX
from ..logs import log_event
from ..requests import id_ref, is_whole_id
from ..store.credentials import Credential, CredentialStore, NewCredential, credential_view
from ..store.db import DB_ERRORS, describe_db_error, is_bad_value
from ..store.runs import RunStore
from ..store.syncs import SyncStore
from .access import AccessPolicy, hand_over_socket, identify, route_of, user_name
from .protocol import (
    API_PREFIX,
    NDJSON,
    CredentialAdd,
    CredentialsQuery,
    CredentialUpdate,
    CredentialView,
    DeadLetters,
    DeadLettersQuery,
    Health,
    InstanceView,
    Plan,
    ProcessRequest,
    RetryRequest,
    ScheduleView,
    StatusQuery,
)

logger = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_BYTES = 1024 * 1024
# How often a progress stream with no event to send checks that its client is still there.
_CLIENT_CHECK_SECONDS = 1.0
# What a client can make aiohttp raise while it parses a request or its body.
_CLIENT_FAULTS: tuple[type[BaseException], ...] = (HttpProcessingError, web.RequestPayloadError)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(value), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"message": message, "code": code}, status=status)


def _first_line(text: str, limit: int = 200) -> str:
    """aiohttp's parser messages echo the offending bytes: keep the first line, without them."""
    line = text.strip().split("\n", 1)[0]
    line = re.split(r":\s*(?:b['\"]|bytearray\()", line, maxsplit=1)[0]
    return line.strip().rstrip(":")[:limit]


def _fault_text(exc: BaseException) -> str:
    """What aiohttp found wrong with a request or its body, in one line."""
    cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
    message = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
    return _first_line(str(message)) or type(exc).__name__


class ControlProtocol(web.RequestHandler):
    """aiohttp's HTTP/1.1 protocol, answering what it cannot parse in the protocol's error shape.

    Garbage, broken framing or oversized headers never reach the application; their answer is still
    `{"message", "code"}`, and they are logged as one warning line: whoever can reach the socket
    must not be able to fill the journal with tracebacks.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            # The client went away (while told to go on with its body, say): nobody to answer.
            log_event(logger, logging.DEBUG, "control.client_gone", error=str(exc))
            text, code = "the client closed the connection", "bad_request"
        elif status >= 500:
            logger.critical("control.crashed", exc_info=exc)
            text = f"internal error: {type(exc).__name__}" if exc else "internal error"
            code = "internal"
        else:
            reason = _first_line(message or "") or (_fault_text(exc) if exc else "bad request")
            log_event(
                logger, logging.WARNING, "control.malformed_request", status=status, error=reason
            )
            text, code = f"malformed HTTP request: {reason}", "bad_request"
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already under way; cannot send an error instead")
        response = error_response(status, code, text)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, _CLIENT_FAULTS):
            # A body we answered already and aiohttp still drains (a broken gzip stream, say).
            log_event(logger, logging.WARNING, "control.malformed_request", error=_fault_text(exc))
            return
        super().log_exception(*args, **kwargs)


class EventStream(Protocol):
    """A run's events for one client; `close` when the client is gone (the run goes on)."""

    async def get(self) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


class RunControl(Protocol):
    """What the control channel asks of the runner."""

    async def plan_for(self, request: ProcessRequest | RetryRequest) -> Plan: ...

    async def launch(self, request: ProcessRequest | RetryRequest) -> EventStream: ...

    async def cancel(self, target: uuid.UUID) -> str: ...


@dataclass(frozen=True)
class ControlServices:
    """The daemon's parts the control channel translates HTTP into calls on (the app wires them)."""

    runner: RunControl
    credentials: CredentialStore
    syncs: SyncStore
    runs: RunStore
    lease_seconds: float  # how long an instance's heartbeat counts as alive
    health: Callable[[], Awaitable[Health]]
    schedules: Callable[[], Awaitable[list[ScheduleView]]]
    # Pause (by whom) or resume a schedule for every instance; NotFoundError for an unknown name.
    pause_schedule: Callable[[str, str | None], Awaitable[ScheduleView]]
    resume_schedule: Callable[[str], Awaitable[ScheduleView]]
    # After a credential was added, changed or removed (True): metrics follow.
    credential_changed: Callable[[uuid.UUID, bool], Awaitable[None]]
    # Asks ServiceTitan whether a credential works; raises StsyncError saying why not.
    check_credential: Callable[[Credential], Awaitable[None]]


class ControlServer:
    """Binds the socket and serves the protocol from the daemon's parts."""

    def __init__(
        self,
        *,
        services: ControlServices,
        socket_path: Path,
        socket_mode: int,
        allowed_group: str | None,
        admin_group: str | None = None,
    ) -> None:
        self._services = services
        self._path = socket_path
        self._mode = socket_mode
        self._access = AccessPolicy.configured(allowed_group, admin_group)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None

    @property
    def path(self) -> Path:
        return self._path

    async def start(self) -> None:
        await _claim_socket_path(self._path)
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        routes = [
            web.get(f"{API_PREFIX}/health", self.health),
            web.get(f"{API_PREFIX}/status", self.status),
            web.post(f"{API_PREFIX}/process", self.process),
            web.post(f"{API_PREFIX}/retry", self.retry),
            web.get(f"{API_PREFIX}/runs", self.runs),
            web.get(f"{API_PREFIX}/syncs/{{id}}", self.sync_show),
            web.get(f"{API_PREFIX}/instances", self.instances),
            web.post(f"{API_PREFIX}/cancel/{{target}}", self.cancel),
            web.get(f"{API_PREFIX}/schedules", self.schedules),
            web.post(f"{API_PREFIX}/schedules/{{name}}/pause", self.schedule_pause),
            web.post(f"{API_PREFIX}/schedules/{{name}}/resume", self.schedule_resume),
            web.get(f"{API_PREFIX}/report", self.report),
            web.get(f"{API_PREFIX}/credentials", self.credentials_list),
            web.post(f"{API_PREFIX}/credentials", self.credentials_add),
            web.get(f"{API_PREFIX}/credentials/{{id}}", self.credentials_show),
            web.patch(f"{API_PREFIX}/credentials/{{id}}", self.credentials_update),
            web.delete(f"{API_PREFIX}/credentials/{{id}}", self.credentials_remove),
            web.post(f"{API_PREFIX}/credentials/{{id}}/enable", self.credentials_enable),
            web.post(f"{API_PREFIX}/credentials/{{id}}/disable", self.credentials_disable),
            web.post(f"{API_PREFIX}/credentials/{{id}}/test", self.credentials_test),
            web.get(f"{API_PREFIX}/dead-letters", self.dead_letters),
        ]
        app.add_routes(routes)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        server, loop = self._runner.server, asyncio.get_running_loop()
        assert server is not None

        # No access log, as given to the AppRunner (aiohttp types it as a Logger; None turns it off).
        options: dict[str, Any] = {"access_log": None}

        def protocol() -> ControlProtocol:
            # As web.UnixSite would serve it, but with our answers to unparsable requests.
            return ControlProtocol(server, loop=loop, **options)

        old_umask = os.umask(0o777 & ~self._mode)
        try:
            self._listener = await loop.create_unix_server(protocol, str(self._path))
        finally:
            os.umask(old_umask)
        hand_over_socket(self._path, self._mode, self._access)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    # -- middleware ------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        refusal = self._access.refusal(identify(sock), route_of(request))
        if refusal is not None:
            log_event(logger, logging.WARNING, "control.refused", **refusal.fields)
            return error_response(403, "forbidden", refusal.message)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                code = "not_found" if exc.status == 404 else "bad_request"
                message = exc.reason
                if exc.status == 413:
                    message = f"the body is larger than the {MAX_BODY_BYTES} bytes allowed"
                response = error_response(exc.status, code, message)
                if "Allow" in exc.headers:
                    response.headers["Allow"] = exc.headers["Allow"]
                return response
            raise
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return error_response(400, "bad_request", f"{where}: {first['msg']}")
        except NotFoundError as exc:
            return error_response(404, "not_found", str(exc))
        except ConflictError as exc:
            return error_response(409, "conflict", str(exc))
        except StsyncError as exc:
            return error_response(
                503 if exc.transient else 400,
                "unavailable" if exc.transient else "bad_request",
                str(exc),
            )
        except DB_ERRORS as exc:
            if is_bad_value(exc):
                # A value the protocol models should have refused: still the request's fault, not
                # an outage. Neither the answer nor the log repeats the value.
                log_event(
                    logger, logging.WARNING, "control.value_refused", error=type(exc).__name__
                )
                return error_response(
                    400,
                    "bad_request",
                    "a value cannot be stored (out of range, or text with a NUL character)",
                )
            return error_response(
                503, "unavailable", f"database unavailable: {describe_db_error(exc)}"
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.critical("control.crashed", exc_info=exc)
            return error_response(500, "internal", f"internal error: {type(exc).__name__}")

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request, model: type[BaseModel]) -> Any:
        try:
            raw = await request.read()
        except _CLIENT_FAULTS as exc:
            raise web.HTTPBadRequest(
                reason=f"the body cannot be read: {_fault_text(exc)}"
            ) from None
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest(reason="the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(reason="the body must be a JSON object")
        return model.model_validate(data)

    @staticmethod
    def _ref(request: web.Request, key: str = "id") -> str:
        """The id (whole or a prefix) in the path; the stores resolve it."""
        value = request.match_info[key]
        try:
            return id_ref(value)
        except ValueError as exc:
            raise web.HTTPBadRequest(reason=f"{key} {value!r}: {exc}") from None

    async def _credential_id(self, request: web.Request) -> uuid.UUID:
        ref = self._ref(request)
        return await self._store.resolve(ref)

    # -- handlers --------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return json_response(await self._services.health())

    async def status(self, request: web.Request) -> web.Response:
        query = StatusQuery.model_validate(dict(request.query))
        document = await status_document(self._services.syncs, query, runs=self._services.runs)
        document["instances"] = await self._instances()
        return json_response(document)

    async def _instances(self) -> list[InstanceView]:
        return await self._services.runs.instances(self._services.lease_seconds)

    async def instances(self, request: web.Request) -> web.Response:
        return json_response({"instances": await self._instances()})

    async def _run(
        self, request: web.Request, body: ProcessRequest | RetryRequest
    ) -> web.StreamResponse:
        runner = self._services.runner
        if body.dry_run:
            return json_response(await runner.plan_for(body))
        stream = await runner.launch(body)
        try:
            response = web.StreamResponse(headers={"Content-Type": NDJSON})
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
                while (event := await _next_event(request, stream)) is not None:
                    await response.write(_dumps(event) + b"\n")
                await response.write_eof()
            return response
        finally:
            # The run goes on without this client; its queue must not stay behind.
            stream.close()

    async def process(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, await self._body(request, ProcessRequest))

    async def retry(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, await self._body(request, RetryRequest))

    async def runs(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", str(RUNS_LIMIT_DEFAULT)))
            limit = max(1, min(limit, RUNS_LIMIT_MAX))
        except ValueError:
            raise web.HTTPBadRequest(reason="limit must be a number") from None
        return json_response({"runs": await self._services.runs.recent(limit)})

    async def cancel(self, request: web.Request) -> web.Response:
        ref = self._ref(request, "target")  # a malformed id is a 400 before any lookup
        target = await self._services.runs.resolve_run_or_sync(ref)
        kind = await self._services.runner.cancel(target)
        log_event(logger, logging.INFO, "control.cancelled", target=target, kind=kind)
        return json_response({"cancelled": kind, "id": str(target)})

    async def schedules(self, request: web.Request) -> web.Response:
        return json_response({"schedules": await self._services.schedules()})

    async def schedule_pause(self, request: web.Request) -> web.Response:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        peer = identify(sock)
        by = user_name(peer.uid) if peer is not None else None
        view = await self._services.pause_schedule(request.match_info["name"], by)
        return json_response(view)

    async def schedule_resume(self, request: web.Request) -> web.Response:
        return json_response(await self._services.resume_schedule(request.match_info["name"]))

    async def report(self, request: web.Request) -> web.Response:
        try:
            hours = float(request.query.get("hours", "24"))
        except ValueError:
            raise web.HTTPBadRequest(reason="hours must be a number") from None
        if not 0 < hours <= 24 * 366:
            raise web.HTTPBadRequest(reason="hours must be between 0 and 8784")
        return json_response(await self._services.syncs.report(hours))

    async def dead_letters(self, request: web.Request) -> web.Response:
        query = DeadLettersQuery.model_validate(dict(request.query))
        return json_response(
            await dead_letters_document(self._services.syncs, query, credentials=self._store)
        )

    async def sync_show(self, request: web.Request) -> web.Response:
        ref = self._ref(request)
        syncs = self._services.syncs
        return json_response(await syncs.get(await syncs.resolve(ref)))

    # -- credentials -------------------------------------------------------------------------

    @property
    def _store(self) -> CredentialStore:
        return self._services.credentials

    async def _credential_view(self, credential_id: uuid.UUID) -> CredentialView:
        credential = await self._store.get(credential_id)
        last = await self._store.last_success([credential_id])
        return credential_view(credential, last.get(credential_id))

    async def credentials_list(self, request: web.Request) -> web.Response:
        # An empty filter is no filter, as it always was here.
        query = CredentialsQuery.model_validate({k: v for k, v in request.query.items() if v})
        found = await self._store.list(
            environment=query.environment, company_id=query.company_id, status=query.status
        )
        last = await self._store.last_success([c.id for c in found])
        return json_response({"credentials": [credential_view(c, last.get(c.id)) for c in found]})

    async def credentials_add(self, request: web.Request) -> web.Response:
        body: CredentialAdd = await self._body(request, CredentialAdd)
        credential = await self._store.add(
            NewCredential(
                company_id=body.company_id,
                company_name=body.company_name,
                environment=body.environment,
                tenant_id=body.tenant_id,
                client_id=body.client_id,
                client_secret=body.client_secret,
                app_key=body.app_key,
                schedule_enabled=body.schedule_enabled,
            )
        )
        log_event(
            logger,
            logging.INFO,
            "credential.added",
            credential_id=credential.id,
            company=credential.company_name,
            environment=credential.environment,
            tenant_id=credential.tenant_id,
        )
        await self._services.credential_changed(credential.id, False)
        return json_response(await self._credential_view(credential.id), status=201)

    async def credentials_show(self, request: web.Request) -> web.Response:
        return json_response(await self._credential_view(await self._credential_id(request)))

    async def credentials_update(self, request: web.Request) -> web.Response:
        body: CredentialUpdate = await self._body(request, CredentialUpdate)  # a bad body: 400
        credential_id = await self._credential_id(request)
        await self._store.update(
            credential_id,
            client_id=body.client_id,
            client_secret=body.client_secret,
            app_key=body.app_key,
            clear_app_key=body.clear_app_key,
            schedule_enabled=body.schedule_enabled,
            company_name=body.company_name,
        )
        log_event(logger, logging.INFO, "credential.updated", credential_id=credential_id)
        await self._services.credential_changed(credential_id, False)
        return json_response(await self._credential_view(credential_id))

    async def _set_status(self, request: web.Request, status: str) -> web.Response:
        credential_id = await self._credential_id(request)
        await self._store.set_status(credential_id, CredentialStatus(status))
        log_event(logger, logging.INFO, f"credential.{status}", credential_id=credential_id)
        await self._services.credential_changed(credential_id, False)
        return json_response(await self._credential_view(credential_id))

    async def credentials_enable(self, request: web.Request) -> web.Response:
        return await self._set_status(request, "active")

    async def credentials_disable(self, request: web.Request) -> web.Response:
        return await self._set_status(request, "disabled")

    async def credentials_remove(self, request: web.Request) -> web.Response:
        credential_id = await self._credential_id(request)
        purge = request.query.get("purge", "false").lower() in ("1", "true", "yes")
        await self._store.remove(credential_id, purge=purge)
        event = "credential.purged" if purge else "credential.removed"
        log_event(logger, logging.INFO, event, credential_id=credential_id)
        await self._services.credential_changed(credential_id, True)
        return json_response({"removed": str(credential_id), "purged": purge})

    async def credentials_test(self, request: web.Request) -> web.Response:
        credential_id = await self._credential_id(request)
        credential = await self._store.get(credential_id)
        started = time.monotonic()
        try:
            await self._services.check_credential(credential)
        except StsyncError as exc:
            return json_response(
                {
                    "ok": False,
                    "credential_id": str(credential_id),
                    "category": exc.category.value,
                    "message": str(exc),
                    "seconds": round(time.monotonic() - started, 3),
                }
            )
        return json_response(
            {
                "ok": True,
                "credential_id": str(credential_id),
                "category": None,
                "message": (
                    f"ServiceTitan accepted the credential of {credential.company_name} "
                    f"({credential.environment}, tenant {credential.tenant_id}) and returned data"
                ),
                "seconds": round(time.monotonic() - started, 3),
            }
        )


def _whole_id(ref: str, store: str) -> uuid.UUID:
    """An id given whole, where no store is at hand to resolve a prefix (a caller's bug)."""
    if not is_whole_id(ref):
        raise ValueError(f"the id prefix {ref} needs {store} to resolve it")
    return uuid.UUID(ref)


async def status_document(
    syncs: SyncStore, query: StatusQuery, *, runs: RunStore | None = None
) -> dict[str, Any]:
    """`{"syncs": [...], "summary": {...}}` for the status filters (a run id prefix resolved by
    `runs`); with both `since` and `last_24h`, the later start counts."""
    run_id = None
    if query.run_id is not None:
        run_id = (
            await runs.resolve(query.run_id) if runs else _whole_id(query.run_id, "the run store")
        )
    starts = [query.since] if query.since else []
    if query.last_24h:
        starts.append(datetime.now(UTC) - timedelta(hours=24))
    views, summary = await syncs.status(
        company_id=query.company_id,
        running_only=query.running_only,
        failed_only=query.failed_only,
        since=max(starts, default=None),
        limit=query.limit,
        run_id=run_id,
        environment=query.environment.value if query.environment else None,
        data_type=query.data_type.value if query.data_type else None,
    )
    return {"syncs": views, "summary": summary}


async def dead_letters_document(
    syncs: SyncStore, query: DeadLettersQuery, *, credentials: CredentialStore | None = None
) -> DeadLetters:
    """One page of the matching dead letters, newest first, and how many match in all. A
    credential id prefix is resolved by `credentials`; a whole id is taken as it is (dead letters
    outlive their credential)."""
    credential_id = None
    ref = query.credential_id
    if ref is not None:
        if is_whole_id(ref) or credentials is None:
            credential_id = _whole_id(ref, "the credential store")
        else:
            credential_id = await credentials.resolve(ref)
    return await syncs.dead_letters(
        credential_id=credential_id,
        company_id=query.company_id,
        environment=query.environment.value if query.environment else None,
        data_type=query.data_type.value if query.data_type else None,
        include_resolved=query.include_resolved,
        limit=query.limit,
    )


async def _next_event(request: web.Request, queue: EventStream) -> dict[str, Any] | None:
    """The next event of a run's stream; None at its end, or once the client has gone (a quiet
    stretch of a run must not keep a closed connection's queue)."""
    while True:
        try:
            return await asyncio.wait_for(queue.get(), _CLIENT_CHECK_SECONDS)
        except TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                return None


def _occupied(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _prepare_directory(path: Path, stale: bool) -> None:
    if stale:
        path.unlink()
    if not path.parent.exists():
        path.parent.mkdir(mode=0o750, parents=True)


async def _claim_socket_path(path: Path) -> None:
    """Refuse to steal a live socket; remove a stale one; create the directory (0750) if needed."""
    stale = False
    if _occupied(path):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
        except (OSError, TimeoutError):
            stale = True
        else:
            writer.close()
            raise StsyncError(
                f"another stsyncd is already listening on {path}: stop it first, or set "
                "[control] socket to another path"
            )
    _prepare_directory(path, stale)
