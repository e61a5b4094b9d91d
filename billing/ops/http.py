"""The HTTP side port: /healthz (alive), /readyz (ready to serve), /metrics (Prometheus)."""
from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from billing.ops.readiness import Readiness


def build_app(readiness: Readiness) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        body = {"ready": readiness.ready, "checks": readiness.checks}
        return web.json_response(body, status=200 if readiness.ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start(readiness: Readiness, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(readiness), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
