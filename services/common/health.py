"""Per-service HTTP endpoint: ``/healthz`` (liveness: the poll loop advanced recently),
``/readyz`` (readiness: a typed payload with connection state, lag and offsets; 503
when not ready) and ``/metrics`` (Prometheus). Binds to loopback unless told otherwise."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable

from aiohttp import web

from services.common.metrics import Metrics
from services.common.settings import HealthSettings


@dataclass
class Readiness:
    ready: bool
    service: str
    kafka_connected: bool
    sink_healthy: bool
    assigned_partitions: list[str] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    detail: str = ""


class HealthServer:
    def __init__(
        self,
        settings: HealthSettings,
        metrics: Metrics,
        last_progress: Callable[[], float],
        readiness: Callable[[], Awaitable[Readiness]],
        routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._last_progress = last_progress
        self._readiness = readiness
        self._routes = routes or {}  # extra GET routes, e.g. the alerting API
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        for path, handler in self._routes.items():
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        age = time.time() - self._last_progress()
        alive = age < self.settings.liveness_timeout_s
        return web.json_response(
            {"alive": alive, "seconds_since_progress": round(age, 3)}, status=200 if alive else 503
        )

    async def _readyz(self, _: web.Request) -> web.Response:
        r = await self._readiness()
        return web.json_response(asdict(r), status=200 if r.ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8")
