"""A small aiohttp server on a real Unix socket answering the control protocol with canned data.

It is not the daemon: it pins the protocol contract the CLI relies on (paths, bodies, NDJSON events,
error bodies) so the CLI's output and exit codes can be checked without PostgreSQL or ServiceTitan.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from stsync_daemon.control.protocol import (
    API_PREFIX,
    NDJSON,
    CredentialView,
    DeadLetters,
    DeadLetterView,
    Health,
    Plan,
    PlanItem,
    Report,
    RunSummary,
    RunView,
    ScheduleView,
    StatusSummary,
    SyncView,
)

RUN_ID = "11111111-1111-4111-8111-111111111111"
CRED_A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
CRED_B = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
UNKNOWN = "99999999-9999-4999-8999-999999999999"
SYNC_OK = "00000000-0000-4000-8000-000000000001"
SYNC_FAILED = "00000000-0000-4000-8000-000000000002"
SYNC_RUNNING = "00000000-0000-4000-8000-000000000003"


def sync_view(**overrides: Any) -> SyncView:
    """A finished, successful sync unless told otherwise."""
    view: SyncView = {
        "id": SYNC_OK,
        "run_id": RUN_ID,
        "company_id": "1042",
        "company": "Acme HVAC",
        "credential_id": CRED_A,
        "environment": "production",
        "tenant_id": 123456789,
        "data_type": "customers",
        "status": "completed",
        "trigger": "manual",
        "mode": "incremental",
        "started_at": "2024-05-01T10:00:00Z",
        "completed_at": "2024-05-01T10:01:30Z",
        "duration_seconds": 90.0,
        "records_processed": 1500,
        "records_successful": 1500,
        "records_failed": 0,
        "pages": 3,
        "error_category": None,
        "error_message": None,
        "attempt": 1,
        "retry_of": None,
        "instance": "host-1",
    }
    view.update(overrides)  # type: ignore[typeddict-item]
    return view


FAILED_SYNC = sync_view(
    id=SYNC_FAILED,
    company_id="2077",
    company="Bolt Plumbing",
    credential_id=CRED_B,
    environment="integration",
    tenant_id=555,
    data_type="invoices",
    status="failed",
    completed_at="2024-05-01T10:00:05Z",
    duration_seconds=5.0,
    records_processed=0,
    records_successful=0,
    error_category="auth",
    error_message="ServiceTitan rejected the client id or secret: check them with "
    "`stsyncctl credentials test`",
)
RUNNING_SYNC = sync_view(
    id=SYNC_RUNNING,
    status="running",
    data_type="invoices",
    completed_at=None,
    duration_seconds=None,
    records_processed=250,
    records_successful=250,
)
ALL_SYNCS = [RUNNING_SYNC, sync_view(), FAILED_SYNC]
TRACE_ID = "00-6f1c0b9d2e3a4f5b8c7d6e5f4a3b2c1d-9e8f7a6b5c4d3e2f-01"
# A message longer than the status table's Error column: its traceId is cut off there.
LONG_ERROR = (
    "ServiceTitan answered 400 Bad Request on GET /crm/v2/tenant/555/export/invoices: "
    "The continuation token is malformed or was issued for another export; start a new export "
    f"without it (traceId {TRACE_ID})"
)


def _matches(ref: str, full: str) -> bool:
    """Whether an id reference (whole, or a prefix without dashes) stands for `full`."""
    return full.replace("-", "").startswith(ref.replace("-", "").lower())


def status_summary(syncs: list[SyncView], dead_letters: int = 0) -> StatusSummary:
    by_status: dict[str, int] = {}
    for sync in syncs:
        by_status[sync["status"]] = by_status.get(sync["status"], 0) + 1
    finished = len(syncs) - by_status.get("running", 0)
    return {
        "total_syncs": len(syncs),
        "by_status": by_status,
        "success_rate": by_status.get("completed", 0) / finished if finished else None,
        "total_records_processed": sum(s["records_processed"] for s in syncs),
        "total_records_failed": sum(s["records_failed"] for s in syncs),
        "mean_duration_seconds": 47.5 if finished else None,
        "dead_letters": dead_letters,
    }


LONG_REASON = (
    "the record cannot be stored: PostgreSQL text cannot hold the NUL character (\\u0000) found "
    "in field 'name' of customer 98765; fix it in ServiceTitan and the next sync stores it"
)


def dead_letter(**overrides: Any) -> DeadLetterView:
    """An open dead letter of Acme HVAC's customers unless told otherwise."""
    view: DeadLetterView = {
        "id": 3,
        "sync_id": SYNC_OK,
        "credential_id": CRED_A,
        "company_id": "1042",
        "company": "Acme HVAC",
        "environment": "production",
        "tenant_id": 123456789,
        "data_type": "customers",
        "record_id": "98765",
        "reason": LONG_REASON,
        "raw": '{"id": 98765, "name": "A\\u0000B"}',
        "created_at": "2024-05-01T10:00:40Z",
        "resolved_at": None,
    }
    view.update(overrides)  # type: ignore[typeddict-item]
    return view


# Newest first, as the daemon sends them: one whose credential was removed, two open, one resolved.
ALL_DEAD_LETTERS = [
    dead_letter(
        id=4,
        sync_id=None,
        credential_id="cccccccc-cccc-4ccc-8ccc-cccccccccccc",
        company_id=None,
        company=None,
        data_type="invoices",
        record_id="777",
        reason="invoice 777 has no customerId",
        raw='{"id": 777}',
        created_at="2024-05-01T10:00:50Z",
    ),
    dead_letter(),
    dead_letter(
        id=2,
        sync_id=SYNC_FAILED,
        credential_id=CRED_B,
        company_id="2077",
        company="Bolt Plumbing",
        environment="integration",
        tenant_id=555,
        data_type="invoices",
        record_id="5551",
        reason="the record is not valid UTF-8",
        raw='{"id": 5551, "summary": "caf\\xe9"}',
        created_at="2024-05-01T10:00:03Z",
    ),
    dead_letter(
        id=1,
        record_id="12",
        reason="customer 12 has no modifiedOn",
        raw='{"id": 12}',
        created_at="2024-04-30T08:00:00Z",
        resolved_at="2024-05-01T10:01:30Z",
    ),
]


def open_dead_letters(company_id: str | None = None) -> int:
    return sum(
        1
        for item in ALL_DEAD_LETTERS
        if item["resolved_at"] is None and company_id in (None, item["company_id"])
    )


def dead_letters_document(query: dict[str, str]) -> DeadLetters:
    """What the fake answers to `GET /v1/dead-letters` with this query."""
    found = [
        item
        for item in ALL_DEAD_LETTERS
        if (query.get("include_resolved") == "true" or item["resolved_at"] is None)
        and all(
            query[key] == item[key]  # type: ignore[literal-required]
            for key in ("credential_id", "company_id", "environment", "data_type")
            if key in query
        )
    ]
    limit = int(query.get("limit", "50"))
    return {"dead_letters": found[:limit], "total": len(found)}


def credential_view(credential_id: str = CRED_A, **overrides: Any) -> CredentialView:
    view: CredentialView = {
        "id": credential_id,
        "company_id": "1042",
        "company": "Acme HVAC",
        "environment": "production",
        "tenant_id": 123456789,
        "client_id": "cid.acme",
        "status": "active",
        "last_error": None,
        "last_error_at": None,
        "schedule_enabled": True,
        "has_app_key": False,
        "created_at": "2024-04-01T09:00:00Z",
        "updated_at": "2024-04-01T09:00:00Z",
        "last_success": {"customers": "2024-05-01T10:01:30Z", "invoices": None},
    }
    view.update(overrides)  # type: ignore[typeddict-item]
    return view


SCHEDULE: ScheduleView = {
    "name": "hourly-production",
    "cron": "0 * * * *",
    "timezone": "UTC",
    "action": "process",
    "enabled": True,
    "paused": False,
    "paused_at": None,
    "filters": {"environment": "production", "data_type": "both"},
    "next_fire_at": "2024-05-01T11:00:00Z",
    "last_fire_at": "2024-05-01T10:00:00Z",
    "last_run_id": RUN_ID,
    "running": False,
    "runs": 10,
    "skips": 1,
    "misfires": 0,
}


def plan_item(**overrides: Any) -> PlanItem:
    item: PlanItem = {
        "credential_id": CRED_A,
        "company_id": "1042",
        "company": "Acme HVAC",
        "environment": "integration",
        "tenant_id": 123456789,
        "data_type": "customers",
        "mode": "incremental",
        "resume_from": "cursor",
        "cursor_modified_on": "2024-05-01T09:00:00Z",
        "last_success_at": "2024-05-01T09:01:00Z",
        "estimated_records": 42,
        "estimate_error": None,
        "estimated_seconds": 3.5,
        "retry_of": None,
        "attempt": 1,
    }
    item.update(overrides)  # type: ignore[typeddict-item]
    return item


def run_summary(syncs: list[SyncView], *, action: str = "process") -> RunSummary:
    successful = sum(1 for s in syncs if s["status"] == "completed")
    return {
        "run_id": RUN_ID,
        "action": action,
        "trigger": "manual",
        "status": "completed",
        "total_credentials": len({s["credential_id"] for s in syncs}),
        "total_syncs": len(syncs),
        "successful_syncs": successful,
        "failed_syncs": len(syncs) - successful,
        "total_records_processed": sum(s["records_processed"] for s in syncs),
        "execution_time_seconds": 12.5,
        "started_at": "2024-05-01T10:00:00Z",
        "completed_at": "2024-05-01T10:00:12Z",
        "syncs": syncs,
        "skipped": [],
    }


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class FakeDaemon:
    """Serves canned answers; `mode` = "forbidden" / "unavailable" makes every answer an error."""

    socket: Path
    mode: str = "normal"
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None
    # Run outcomes: "mixed" (one ok, one failed), "ok", "empty", "broken" (error event, no summary),
    # "cut" (stream ends early), "slow" (waits before finishing); "degraded": health says so.
    outcome: str = "mixed"

    async def start(self) -> FakeDaemon:
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(
            [
                web.get(f"{API_PREFIX}/health", self.health),
                web.get(f"{API_PREFIX}/status", self.status),
                web.post(f"{API_PREFIX}/process", self.run),
                web.post(f"{API_PREFIX}/retry", self.run),
                web.get(f"{API_PREFIX}/runs", self.runs),
                web.post(f"{API_PREFIX}/cancel/{{target}}", self.cancel),
                web.get(f"{API_PREFIX}/syncs/{{id}}", self.sync_show),
                web.get(f"{API_PREFIX}/schedules", self.schedules),
                web.get(f"{API_PREFIX}/report", self.report),
                web.get(f"{API_PREFIX}/credentials", self.credentials_list),
                web.post(f"{API_PREFIX}/credentials", self.credentials_add),
                web.get(f"{API_PREFIX}/credentials/{{id}}", self.credential),
                web.patch(f"{API_PREFIX}/credentials/{{id}}", self.credential),
                web.delete(f"{API_PREFIX}/credentials/{{id}}", self.credentials_remove),
                web.post(f"{API_PREFIX}/credentials/{{id}}/enable", self.credential),
                web.post(f"{API_PREFIX}/credentials/{{id}}/disable", self.credential),
                web.post(f"{API_PREFIX}/credentials/{{id}}/test", self.credentials_test),
                web.get(f"{API_PREFIX}/dead-letters", self.dead_letters),
            ]
        )
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.socket)).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @staticmethod
    def error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"message": message, "code": code}, status=status)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(
            Seen(
                request.method, request.path, dict(request.query), json.loads(raw) if raw else None
            )
        )
        if self.mode == "forbidden":
            return self.error(403, "forbidden", "not authorised: only root and the stsync group")
        if self.mode == "unavailable":
            return self.error(503, "unavailable", "database unavailable: connection refused")
        result: web.StreamResponse = await handler(request)
        return result

    def last(self) -> Seen:
        return self.seen[-1]

    # -- handlers ------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        degraded = self.outcome == "degraded"
        body: Health = {
            "status": "degraded" if degraded else "ok",
            "version": "0.1.0",
            "instance": "host-1",
            "pid": 4242,
            "uptime_seconds": 3725.0,
            "database": "unavailable" if degraded else "ok",
            "running_syncs": 1,
            "running_runs": 1,
            "problems": (
                ["PostgreSQL is unreachable; syncs wait until it is back"] if degraded else []
            ),
            "loops": {"claims": "ok", "heartbeat": "ok", "scheduler": "ok", "sweep": "ok"},
        }
        return web.json_response(body)

    async def status(self, request: web.Request) -> web.Response:
        syncs = list(ALL_SYNCS)
        if request.query.get("running_only") == "true":
            syncs = [s for s in syncs if s["status"] == "running"]
        if request.query.get("failed_only") == "true":
            syncs = [s for s in syncs if s["status"] in ("failed", "timed_out", "interrupted")]
        for key in ("company_id", "environment", "data_type"):
            if key in request.query:
                syncs = [s for s in syncs if s[key] == request.query[key]]  # type: ignore[literal-required]
        if "run_id" in request.query:
            if not _matches(request.query["run_id"], RUN_ID):
                return self.error(
                    404, "not_found", f"no run id starts with {request.query['run_id']}"
                )
            syncs = [s for s in syncs if s["run_id"] == RUN_ID]
        summary = status_summary(syncs, open_dead_letters(request.query.get("company_id")))
        limit = int(request.query.get("limit", "50"))
        return web.json_response({"syncs": syncs[:limit], "summary": summary})

    async def run(self, request: web.Request) -> web.StreamResponse:
        body = self.last().body or {}
        action = "retry" if request.path.endswith("/retry") else "process"
        if body.get("dry_run"):
            items = (
                [] if self.outcome == "empty" else [plan_item(), plan_item(data_type="invoices")]
            )
            plan: Plan = {
                "dry_run": True,
                "action": action,
                "total_credentials": 1 if items else 0,
                "items": items,
                "skipped": [],
                "schedules": [SCHEDULE],
            }
            return web.json_response(plan)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)

        async def send(event: dict[str, Any]) -> None:
            await response.write(json.dumps(event).encode() + b"\n")

        finished = [] if self.outcome == "empty" else [sync_view()]
        if self.outcome in ("mixed", "broken", "cut", "slow"):
            finished.append(FAILED_SYNC)
        await send(
            {
                "event": "run.started",
                "run_id": RUN_ID,
                "action": action,
                "total_credentials": len({s["credential_id"] for s in finished}),
                "syncs": [
                    {
                        "credential_id": s["credential_id"],
                        "company": s["company"],
                        "environment": s["environment"],
                        "data_type": s["data_type"],
                    }
                    for s in finished
                ],
                "skipped": [],
            }
        )
        if self.outcome == "slow":
            await asyncio.sleep(60)
        for sync in finished:
            common = {
                "run_id": RUN_ID,
                "credential_id": sync["credential_id"],
                "company_id": sync["company_id"],
                "company": sync["company"],
                "environment": sync["environment"],
                "data_type": sync["data_type"],
            }
            await send({"event": "sync.started", **common, "mode": "incremental"})
            for page in (1, 2):
                await send(
                    {
                        "event": "sync.progress",
                        **common,
                        "sync_id": sync["id"],
                        "records_processed": 500 * page,
                        "records_failed": 0,
                        "pages": page,
                        "rate": 250.0,
                    }
                )
            if self.outcome == "cut":
                await response.write_eof()
                return response
            await send({"event": "sync.finished", "run_id": RUN_ID, "sync": sync})
        if self.outcome == "broken":
            await send({"event": "error", "message": "the database went away"})
        else:
            await send({"event": "run.finished", "summary": run_summary(finished, action=action)})
        await response.write_eof()
        return response

    async def runs(self, request: web.Request) -> web.Response:
        run: RunView = {
            "id": RUN_ID,
            "action": "process",
            "trigger": "scheduled",
            "schedule_name": "hourly-production",
            "scheduled_for": "2024-05-01T10:00:00Z",
            "status": "running",
            "instance": "host-1",
            "started_at": "2024-05-01T10:00:00Z",
            "completed_at": None,
            "total_syncs": 2,
            "running_syncs": 1,
            "successful_syncs": 1,
            "failed_syncs": 0,
            "records_processed": 1750,
        }
        return web.json_response({"runs": [run]})

    async def cancel(self, request: web.Request) -> web.Response:
        target = request.match_info["target"]
        if _matches(target, RUN_ID):
            return web.json_response({"cancelled": "run", "id": RUN_ID})
        return self.error(404, "not_found", f"no running run or sync with id {target}")

    async def sync_show(self, request: web.Request) -> web.Response:
        ref = request.match_info["id"]
        if ref.replace("-", "") == "0000":
            return self.error(
                400,
                "bad_request",
                "id prefix 0000 is ambiguous: 3 syncs match; give more of its digits",
            )
        for sync in ALL_SYNCS:
            if _matches(ref, sync["id"]):
                if sync["id"] == SYNC_FAILED:
                    return web.json_response({**sync, "error_message": LONG_ERROR})
                return web.json_response(sync)
        return self.error(404, "not_found", f"no sync id starts with {ref}")

    async def schedules(self, request: web.Request) -> web.Response:
        return web.json_response({"schedules": [SCHEDULE]})

    async def report(self, request: web.Request) -> web.Response:
        hours = float(request.query.get("hours", "24"))
        body: Report = {
            "generated_at": "2024-05-01T08:00:00Z",
            "since": "2024-04-30T08:00:00Z",
            "hours": hours,
            "rows": [
                {
                    "company_id": "1042",
                    "company": "Acme HVAC",
                    "credential_id": CRED_A,
                    "environment": "production",
                    "data_type": "customers",
                    "syncs": 24,
                    "completed": 23,
                    "failed": 1,
                    "records_processed": 9000,
                    "records_failed": 2,
                    "last_status": "completed",
                    "last_success_at": "2024-05-01T07:00:00Z",
                    "last_error": None,
                }
            ],
            "summary": status_summary(ALL_SYNCS, open_dead_letters()),
        }
        return web.json_response(body)

    async def dead_letters(self, request: web.Request) -> web.Response:
        limit = request.query.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 10_000:
            return self.error(400, "bad_request", "limit: must be between 1 and 10000")
        return web.json_response(dead_letters_document(dict(request.query)))

    async def credentials_list(self, request: web.Request) -> web.Response:
        found = [
            credential_view(),
            credential_view(
                CRED_B,
                company_id="2077",
                company="Bolt Plumbing",
                environment="integration",
                status="error",
                last_error="ServiceTitan rejected the client secret",
            ),
        ]
        for key in ("environment", "company_id", "status"):
            if key in request.query:
                found = [c for c in found if c[key] == request.query[key]]  # type: ignore[literal-required]
        return web.json_response({"credentials": found})

    @staticmethod
    def _credential_id(request: web.Request) -> str | None:
        """The credential a whole id or a prefix stands for (the daemon resolves prefixes)."""
        return next((c for c in (CRED_A, CRED_B) if _matches(request.match_info["id"], c)), None)

    def _known(self, request: web.Request) -> web.Response | None:
        if self._credential_id(request) is None:
            return self.error(404, "not_found", f"no credential with id {request.match_info['id']}")
        return None

    async def credential(self, request: web.Request) -> web.Response:
        missing = self._known(request)
        if missing is not None:
            return missing
        status = {"enable": "active", "disable": "disabled"}.get(request.path.rsplit("/", 1)[-1])
        view = credential_view(self._credential_id(request) or "")
        if status:
            view["status"] = status
        return web.json_response(view)

    async def credentials_add(self, request: web.Request) -> web.Response:
        body = self.last().body
        if body["company_id"] == "dup":
            return self.error(409, "conflict", "a credential for tenant 123 already exists")
        view = credential_view(
            CRED_B,
            company_id=body["company_id"],
            company=body["company_name"],
            environment=body["environment"],
            tenant_id=body["tenant_id"],
            client_id=body["client_id"],
            has_app_key="app_key" in body,
        )
        return web.json_response(view, status=201)

    async def credentials_remove(self, request: web.Request) -> web.Response:
        missing = self._known(request)
        if missing is not None:
            return missing
        return web.json_response({"removed": self._credential_id(request)})

    async def credentials_test(self, request: web.Request) -> web.Response:
        missing = self._known(request)
        if missing is not None:
            return missing
        if self._credential_id(request) == CRED_B:
            return web.json_response(
                {
                    "ok": False,
                    "credential_id": CRED_B,
                    "category": "auth",
                    "message": "ServiceTitan rejected the client id or secret",
                    "seconds": 0.2,
                }
            )
        return web.json_response(
            {
                "ok": True,
                "credential_id": CRED_A,
                "category": None,
                "message": "ServiceTitan accepted the credential of Acme HVAC",
                "seconds": 0.3,
            }
        )
