"""stsyncctl's commands: each asks the daemon through `client` and shows the answer via `render`.

A handler gets the `Context` (streams, socket, the prepared request) and the parsed arguments,
and returns the command's exit code; errors that end a command are raised for `main` to report.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import quote

from pydantic import BaseModel

from ..control.protocol import (
    EVENT_ERROR,
    EVENT_RUN_FINISHED,
    EVENT_RUN_STARTED,
    EVENT_SYNC_FINISHED,
    EVENT_SYNC_PROGRESS,
    EVENT_SYNC_STARTED,
    CredentialView,
    DeadLetters,
    Health,
    Plan,
    Report,
    RunSummary,
    RunView,
    ScheduleView,
    SkippedView,
    StatusSummary,
    SyncView,
)
from . import render
from .client import ControlClient, DaemonUnreachable
from .exits import EXIT_FAILED, EXIT_OK
from .parser import PROG
from .requests import query_params, wire


@dataclass
class Context:
    """What a command needs besides its arguments; `run_id` is kept for the Ctrl-C note."""

    socket: Path
    json_output: bool
    stdout: TextIO
    stderr: TextIO
    stdin: TextIO
    request: BaseModel | None = None
    quiet: bool = False  # -q: nothing on stdout; failures still reach stderr
    run_id: str | None = None
    progress: render.Progress | None = field(default=None, repr=False)

    def width(self) -> int:
        """Columns available to tables (wide when not on a terminal, unless $COLUMNS says)."""
        return shutil.get_terminal_size((160, 24)).columns

    def out(self, text: str = "") -> None:
        """A line of human output on stdout."""
        self.stdout.write(text + "\n")

    def emit_json(self, document: object) -> None:
        """The one JSON document of `--json-output`."""
        self.stdout.write(render.dump_json(document))

    def note(self, text: str) -> None:
        """A one-line message on stderr."""
        self.stderr.write(f"{PROG}: {text}\n")
        self.stderr.flush()

    def client(self) -> ControlClient:
        """A client of the configured socket."""
        return ControlClient(self.socket)


Handler = Callable[[Context, argparse.Namespace], Coroutine[Any, Any, int]]


def _path_id(value: str) -> str:
    return quote(value, safe="")


def _answered_id(answer: Any, given: str, key: str = "id") -> str:
    """The whole id the daemon answered with (the operator may have given a prefix)."""
    if isinstance(answer, dict) and isinstance(answer.get(key), str):
        return str(answer[key])
    return given


async def process(ctx: Context, args: argparse.Namespace) -> int:
    """`process`: a plan with --dry-run, else the run followed to its summary."""
    return await _run_batch(ctx, "/process", estimate=bool(args.estimate))


async def retry(ctx: Context, args: argparse.Namespace) -> int:
    """`retry`: as `process`, for the failures the daemon picks."""
    return await _run_batch(ctx, "/retry", estimate=False)


def _make_progress(ctx: Context) -> render.Progress:
    """Bars on a terminal, plain lines otherwise; with JSON, only on a terminal's stderr."""
    if ctx.quiet:
        return render.Progress(None)
    if ctx.json_output:
        if ctx.stderr.isatty():
            return render.TtyProgress(ctx.stderr, ctx.width)
        return render.Progress(None)
    if ctx.stdout.isatty():
        return render.TtyProgress(ctx.stdout, ctx.width)
    return render.PlainProgress(ctx.stdout)


async def _run_batch(ctx: Context, path: str, *, estimate: bool) -> int:
    assert ctx.request is not None
    body = wire(ctx.request)
    async with ctx.client() as client:
        if body.get("dry_run"):
            plan = cast(Plan, await client.request("POST", path, body=body))
            if ctx.quiet:
                pass
            elif ctx.json_output:
                ctx.emit_json(plan)
            else:
                ctx.out(render.plan_text(plan, ctx.width(), estimate=estimate))
            return EXIT_OK
        progress = ctx.progress = _make_progress(ctx)
        ticker = asyncio.create_task(_tick(progress))
        try:
            return await _follow(ctx, progress, client.stream(path, body))
        finally:
            ticker.cancel()
            progress.close()


async def _tick(progress: render.Progress) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress.refresh()


async def _follow(ctx: Context, progress: render.Progress, events: Any) -> int:
    """Show a run's events as they come; the run's summary decides the exit code."""
    summary: RunSummary | None = None
    failure: str | None = None
    shown_skips: set[tuple[str, str, str]] = set()

    def skipped(items: Sequence[SkippedView]) -> None:
        for item in items:
            key = (item["credential_id"], item["data_type"], item["reason"])
            if key not in shown_skips:
                shown_skips.add(key)
                progress.line(render.skipped_lines([item])[0])

    async for event in events:
        kind = event.get("event")
        if kind == EVENT_RUN_STARTED:
            ctx.run_id = str(event.get("run_id"))
            planned = event.get("syncs") or []
            progress.line(
                render.found_line(
                    str(event.get("action", "process")),
                    int(event.get("total_credentials") or 0),
                    len(planned),
                )
            )
            skipped(event.get("skipped") or [])
        elif kind == EVENT_SYNC_STARTED:
            progress.started(event)
        elif kind == EVENT_SYNC_PROGRESS:
            progress.progress(event)
        elif kind == EVENT_SYNC_FINISHED:
            progress.finished(cast(SyncView, event["sync"]))
        elif kind == EVENT_RUN_FINISHED:
            summary = cast(RunSummary, event["summary"])
            skipped(summary.get("skipped") or [])
        elif kind == EVENT_ERROR:
            failure = str(event.get("message") or "unknown error")
        # Unknown events are ignored: a newer daemon may send more.
    progress.close()
    if summary is None:
        if failure is not None:
            ctx.note(f"the run failed in the daemon: {failure} (journalctl -u stsync.service)")
            return EXIT_FAILED
        raise DaemonUnreachable(
            f"the daemon on {ctx.socket} closed the stream before the run finished; the run may "
            "still be going (stsyncctl runs)"
        )
    ok = summary["failed_syncs"] == 0 and summary["status"] == "completed" and failure is None
    if ctx.quiet:
        if not ok:
            for line in render.quiet_failure_lines(summary):
                ctx.note(line)
    elif ctx.json_output:
        ctx.emit_json(summary)
    else:
        ctx.out(render.run_summary(summary))
    if failure is not None:
        ctx.note(f"the run reported an error: {failure}")
    ctx.run_id = None
    return EXIT_OK if ok else EXIT_FAILED


async def status(ctx: Context, args: argparse.Namespace) -> int:
    """`status`: the recent syncs, then statistics over all that match."""
    assert ctx.request is not None
    async with ctx.client() as client:
        answer = await client.request("GET", "/status", params=query_params(ctx.request))
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    syncs = cast(list[SyncView], answer["syncs"])
    summary = cast(StatusSummary, answer["summary"])
    if not syncs:
        ctx.out(render.NO_SYNCS)
        if summary.get("dead_letters"):
            ctx.out(render.open_dead_letters_note(summary["dead_letters"]))
        return EXIT_OK
    ctx.out(render.status_table(syncs, ctx.width()))
    ctx.out(render.status_summary(summary, len(syncs)))
    return EXIT_OK


def _credential_list(answer: Any) -> list[CredentialView]:
    """`GET /v1/credentials` as a list, whether it came bare or as `{"credentials": [...]}`."""
    if isinstance(answer, dict):
        answer = answer.get("credentials", [])
    return cast(list[CredentialView], answer or [])


async def credentials_list(ctx: Context, args: argparse.Namespace) -> int:
    """`credentials list`: every credential, or those matching the filters."""
    assert ctx.request is not None
    params = query_params(ctx.request)
    async with ctx.client() as client:
        answer = await client.request("GET", "/credentials", params=params)
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    items = _credential_list(answer)
    if not items:
        if params:
            ctx.out("No credentials found matching the criteria")
        else:
            ctx.out("No credentials configured (add one with `stsyncctl credentials add`)")
        return EXIT_OK
    ctx.out(render.credentials_table(items, ctx.width()))
    ctx.out()
    ctx.out(f"{len(items)} credentials")
    return EXIT_OK


async def credentials_show(ctx: Context, args: argparse.Namespace) -> int:
    """`credentials show`: one credential, never its secret."""
    async with ctx.client() as client:
        answer = await client.request("GET", f"/credentials/{_path_id(args.credential_id)}")
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        ctx.out(render.credential_detail(cast(CredentialView, answer)))
    return EXIT_OK


async def credentials_add(ctx: Context, args: argparse.Namespace) -> int:
    """`credentials add`: says how to test the new credential."""
    assert ctx.request is not None
    async with ctx.client() as client:
        answer = await client.request("POST", "/credentials", body=wire(ctx.request))
    view = cast(CredentialView, answer)
    if ctx.json_output:
        ctx.emit_json(view)
    else:
        label = render.sync_label(
            view["company"], view["environment"], f"tenant {view['tenant_id']}"
        )
        ctx.out(f"Added credential {view['id']} for {label}")
        ctx.out(f"Check it with: stsyncctl credentials test {view['id']}")
    return EXIT_OK


async def credentials_update(ctx: Context, args: argparse.Namespace) -> int:
    """`credentials update`."""
    assert ctx.request is not None
    async with ctx.client() as client:
        answer = await client.request(
            "PATCH", f"/credentials/{_path_id(args.credential_id)}", body=wire(ctx.request)
        )
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        ctx.out(f"Updated credential {_answered_id(answer, args.credential_id)}")
        if isinstance(answer, dict):
            ctx.out(render.credential_detail(cast(CredentialView, answer)))
    return EXIT_OK


async def credentials_toggle(ctx: Context, args: argparse.Namespace) -> int:
    """`credentials enable` and `credentials disable`."""
    action = str(args.action)
    async with ctx.client() as client:
        answer = await client.request(
            "POST", f"/credentials/{_path_id(args.credential_id)}/{action}"
        )
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    done = "Enabled" if action == "enable" else "Disabled"
    if isinstance(answer, dict) and "company" in answer:
        view = cast(CredentialView, answer)
        ctx.out(
            f"{done} credential {view['id']} for "
            f"{view['company']} ({view['environment']}): status {view['status']}"
        )
    else:
        ctx.out(f"{done} credential {_answered_id(answer, args.credential_id)}")
    return EXIT_OK


def _confirm(ctx: Context, question: str) -> bool:
    ctx.stderr.write(question + " [y/N] ")
    ctx.stderr.flush()
    answer = ctx.stdin.readline()
    if not answer.endswith("\n"):
        ctx.stderr.write("\n")
    return answer.strip().lower() in ("y", "yes")


async def credentials_remove(ctx: Context, args: argparse.Namespace) -> int:
    """`credentials remove`: asks first on a terminal unless --yes."""
    path = f"/credentials/{_path_id(args.credential_id)}"
    async with ctx.client() as client:
        if not args.yes and ctx.stdin.isatty():
            view = cast(CredentialView, await client.request("GET", path))
            question = (
                f"Remove credential {view['id']} for {view['company']} ({view['environment']}, "
                f"tenant {view['tenant_id']})? "
                + (
                    "Its sync history, cursors and dead letters go with it."
                    if args.purge
                    else "Its history is kept (--purge deletes it)."
                )
            )
            if not _confirm(ctx, question):
                ctx.note("not removed")
                return EXIT_FAILED
        answer = await client.request("DELETE", path + ("?purge=true" if args.purge else ""))
    if ctx.json_output:
        ctx.emit_json(answer if answer is not None else {"removed": True, "id": args.credential_id})
    else:
        what = _answered_id(answer, args.credential_id, key="removed")
        if args.purge:
            ctx.out(f"Removed credential {what} and its history")
        else:
            ctx.out(f"Removed credential {what} (its history is kept)")
    return EXIT_OK


async def credentials_test(ctx: Context, args: argparse.Namespace) -> int:
    """`credentials test`: exit 1 when the credential does not work."""
    async with ctx.client() as client:
        answer = await client.request("POST", f"/credentials/{_path_id(args.credential_id)}/test")
    result = cast(Mapping[str, Any], answer or {})
    ok = bool(result.get("ok"))
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        message = str(result.get("message") or ("it works" if ok else "the test failed"))
        ctx.out(f"{'OK' if ok else 'FAILED'}: {message}")
    return EXIT_OK if ok else EXIT_FAILED


async def schedules(ctx: Context, args: argparse.Namespace) -> int:
    """`schedules`."""
    async with ctx.client() as client:
        answer = await client.request("GET", "/schedules")
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    items = cast(list[ScheduleView], answer.get("schedules") or [])
    if not items:
        ctx.out("No schedules configured")
    else:
        ctx.out(render.schedules_table(items, ctx.width()))
    return EXIT_OK


async def schedule_pause(ctx: Context, args: argparse.Namespace) -> int:
    """`schedules pause NAME` and `schedules resume NAME`."""
    async with ctx.client() as client:
        answer = await client.request(
            "POST", f"/schedules/{quote(args.name, safe='')}/{args.action}"
        )
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    view = cast(ScheduleView, answer)
    if view["paused"]:
        ctx.out(f"Paused {view['name']} (since {view['paused_at']}): its ticks are skipped")
    else:
        ctx.out(f"Resumed {view['name']}: next fire at {view['next_fire_at'] or 'never'}")
    return EXIT_OK


async def runs(ctx: Context, args: argparse.Namespace) -> int:
    """`runs`: the newest first."""
    async with ctx.client() as client:
        answer = await client.request("GET", "/runs", params={"limit": str(args.limit)})
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    items = cast(list[RunView], answer.get("runs") or [])
    if not items:
        ctx.out("No runs found")
    else:
        ctx.out(render.runs_table(items, ctx.width()))
    return EXIT_OK


async def cancel(ctx: Context, args: argparse.Namespace) -> int:
    """`cancel`: a run or a single sync."""
    async with ctx.client() as client:
        answer = await client.request("POST", f"/cancel/{_path_id(args.target)}")
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    what = answer.get("cancelled") if isinstance(answer, dict) else True
    target = _answered_id(answer, args.target)
    if what in ("run", "sync"):
        ctx.out(f"Cancelled {what} {target}; what it committed stays")
    elif what:
        ctx.out(f"Cancelled {target}; what it committed stays")
    else:
        ctx.out(f"Nothing to cancel: {target} is not running")
    return EXIT_OK


async def show(ctx: Context, args: argparse.Namespace) -> int:
    """`show`: one sync in full, its whole error message included."""
    async with ctx.client() as client:
        answer = await client.request("GET", f"/syncs/{_path_id(args.sync_id)}")
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        ctx.out(render.sync_detail(cast(SyncView, answer)))
    return EXIT_OK


async def report(ctx: Context, args: argparse.Namespace) -> int:
    """`report`: the daily report over a window of hours."""
    hours = args.hours if args.hours is not None else 24.0
    async with ctx.client() as client:
        answer = await client.request("GET", "/report", params={"hours": f"{hours:g}"})
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        ctx.out(render.report_text(cast(Report, answer), ctx.width()))
    return EXIT_OK


async def dead_letters(ctx: Context, args: argparse.Namespace) -> int:
    """`dead-letters`: open ones unless --all."""
    assert ctx.request is not None
    async with ctx.client() as client:
        answer = await client.request("GET", "/dead-letters", params=query_params(ctx.request))
    if ctx.json_output:
        ctx.emit_json(answer)
        return EXIT_OK
    document = cast(DeadLetters, answer)
    items, everything = document["dead_letters"], bool(args.include_resolved)
    if not items:
        ctx.out(render.no_dead_letters(include_resolved=everything))
        return EXIT_OK
    ctx.out(render.dead_letters_table(items, ctx.width()))
    ctx.out()
    ctx.out(render.dead_letters_count(document["total"], len(items), include_resolved=everything))
    return EXIT_OK


async def health(ctx: Context, args: argparse.Namespace) -> int:
    """`health`: exit 0 only when the daemon is ok."""
    async with ctx.client() as client:
        answer = await client.request("GET", "/health")
    if ctx.json_output:
        ctx.emit_json(answer)
    else:
        ctx.out(render.health_text(cast(Health, answer)))
    # For monitoring scripts: only a daemon that can do all of its work answers 0.
    return EXIT_OK if answer.get("status") == "ok" else EXIT_FAILED
