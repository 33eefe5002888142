"""A webhook subscriber: what a team that receives Argus (or Alertmanager) webhooks runs,
and what the demo, the tests and the benchmark use as the receiving end.

It checks the HMAC signature (401 when it does not verify), drops duplicates by
``Idempotency-Key`` (answering 200, so the sender stops retrying), appends every new
notification to a JSON-lines file and prints a line per notification.

    python -m services.alerting.receiver          # settings from ARGUS_RECEIVER_*
    ARGUS_RECEIVER_SECRET=... ARGUS_RECEIVER_PORT=9096 ARGUS_RECEIVER_OUTPUT=alerts.jsonl

``fail_every=N`` answers 503 to every N-th request (to see retries work).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.webhook import verify_signature


class ReceiverSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARGUS_RECEIVER_", frozen=True)

    host: str = "127.0.0.1"
    port: int = 9096
    path: str = "/alerts"
    secret: SecretStr | None = None
    output: Path | None = None
    fail_every: int = 0


class WebhookReceiver:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/alerts",
        secret: bytes | None = None,
        output: Path | None = None,
        fail_every: int = 0,
        echo: bool = False,
    ) -> None:
        self.host, self.port, self.path, self.secret = host, port, path, secret
        self.output, self.fail_every, self.echo = output, fail_every, echo
        self.requests: list[dict[str, Any]] = []  # every attempt, with the status answered
        self.notifications: dict[str, dict[str, Any]] = {}  # idempotency key -> first accepted request
        self.duplicates = 0
        self.bad_signatures = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def start(self) -> "WebhookReceiver":
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"alive": True, "notifications": len(self.notifications)})

    async def _readyz(self, _: web.Request) -> web.Response:
        """Ready when a notification can be kept: the output file (if any) can be appended to."""
        problem = ""
        if self.output is not None:
            try:
                with self.output.open("a"):
                    pass
            except OSError as exc:
                problem = f"cannot append to {self.output}: {exc.strerror}"
        detail = problem or (
            f"{len(self.notifications)} notifications, {self.duplicates} duplicates, "
            f"{self.bad_signatures} bad signatures"
        )
        return web.json_response(
            {"ready": not problem, "service": "subscriber", "notifications": len(self.notifications), "detail": detail},
            status=503 if problem else 200,
        )

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.time()
        headers = dict(request.headers)
        entry: dict[str, Any] = {"headers": headers, "body": body, "at": at}
        try:
            entry["json"] = json.loads(body)
        except ValueError:
            entry["json"] = None
        status = 200
        if self.fail_every and (len(self.requests) + 1) % self.fail_every == 0:
            status = 503
        elif entry["json"] is None:
            status = 400
        elif self.secret is not None and not verify_signature(self.secret, headers, body):
            status = 401
            self.bad_signatures += 1
        else:
            key = headers.get("Idempotency-Key") or ""
            if key and key in self.notifications:
                self.duplicates += 1
            else:
                self.notifications[key or f"no-key-{len(self.requests)}"] = entry
                self._record(entry)
        entry["status"] = status
        self.requests.append(entry)
        return web.Response(status=status)

    def _record(self, entry: dict[str, Any]) -> None:
        p = entry["json"]
        if self.output is not None:
            with self.output.open("a") as f:
                f.write(
                    json.dumps(
                        {
                            "received_at": entry["at"],
                            "idempotency_key": entry["headers"].get("Idempotency-Key"),
                            "payload": p,
                        }
                    )
                    + "\n"
                )
        if not self.echo:
            return
        names = ", ".join(sorted({a["labels"].get("alertname", "?") for a in p.get("alerts", [])}))
        print(f"{time.strftime('%H:%M:%S')} {p.get('status', '?'):<8} {names} {p.get('groupLabels', {})}", flush=True)

    def delivered(self) -> list[dict[str, Any]]:
        """Accepted requests, in arrival order (duplicates included)."""
        return [r for r in self.requests if r["status"] == 200]


async def _main() -> None:
    s = ReceiverSettings()
    r = WebhookReceiver(
        s.host,
        s.port,
        s.path,
        s.secret.get_secret_value().encode() if s.secret else None,
        s.output,
        s.fail_every,
        echo=True,
    )
    await r.start()
    print(f"receiving webhooks on {r.url}" + (" (signatures checked)" if s.secret else ""), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await r.stop()


if __name__ == "__main__":
    asyncio.run(_main())
    sys.exit(0)
