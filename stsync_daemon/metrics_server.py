"""The HTTP endpoint Prometheus scrapes: `/metrics` from the private registry, and `/healthz`."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from .metrics import Metrics


async def start_metrics_server(
    metrics: Metrics,
    host: str,
    port: int,
    *,
    verdict: Callable[[], tuple[str, list[str]]] | None = None,
) -> web.AppRunner:
    """Serve on host:port (0: a free port, see `runner.addresses`); `runner.cleanup()` stops it.

    `/healthz` answers 200 "ok" when `verdict` says `ok`, else 503 with the status and one reason
    per line (database unreachable, a configuration problem, a failed loop), for probes.
    """

    async def healthz(request: web.Request) -> web.Response:
        status, reasons = verdict() if verdict is not None else ("ok", [])
        if status != "ok":
            return web.Response(status=503, text="\n".join([status, *reasons]) + "\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/healthz", healthz)
    # No access log: a scrape every 15 s would drown the events that matter.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
