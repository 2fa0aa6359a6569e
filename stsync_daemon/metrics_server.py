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
    healthy: Callable[[], bool] | None = None,
) -> web.AppRunner:
    """Serve on host:port (0: a free port, see `runner.addresses`); `runner.cleanup()` stops it.

    `/healthz` answers 200 "ok", or 503 when `healthy` returns False, for load balancers and probes.
    """

    async def healthz(request: web.Request) -> web.Response:
        if healthy is not None and not healthy():
            return web.Response(status=503, text="unhealthy\n")
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
