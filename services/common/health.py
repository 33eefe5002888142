"""Per-service HTTP endpoint: ``/healthz`` (liveness: the poll loop advanced recently),
``/readyz`` (readiness: a typed payload with connection state, lag and offsets; 503
when not ready) and ``/metrics`` (Prometheus). Binds to loopback unless told otherwise."""

from __future__ import annotations

import hmac
import time
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable

from aiohttp import web
from pydantic import SecretStr

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
        routes_token: SecretStr | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._last_progress = last_progress
        self._readiness = readiness
        self._routes = routes or {}  # extra GET routes, e.g. the alerting API
        # the extra routes are a control API: they need this bearer token (none: refused);
        # health and metrics stay open (probes, Prometheus) and bind to loopback by default
        self._routes_token = routes_token
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        for path, handler in self._routes.items():
            app.router.add_get(path, self._guarded(handler))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    def _guarded(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            want = self._routes_token.get_secret_value() if self._routes_token is not None else None
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if not want:
                return web.json_response(
                    {"error": "this API is disabled: no token configured (API_TOKEN_FILE)"}, status=401
                )
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), want.encode()):
                return web.json_response(
                    {"error": "a valid bearer token is required"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="argus"'},
                )
            return await handler(request)

        return guarded

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
