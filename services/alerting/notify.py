"""Delivery to subscribers: Alertmanager webhook payloads (version 4, so receivers
written for Alertmanager work unchanged) and Slack-compatible payloads, signed with
HMAC-SHA256 and retried with exponential backoff.

Headers on every request:

- ``Idempotency-Key``: stable for one notification across retries and restarts; a
  receiver that stores the keys it has seen drops duplicates.
- ``X-Argus-Timestamp`` and ``X-Argus-Signature: sha256=<hex>`` where the hex digest is
  ``HMAC-SHA256(secret, "<timestamp>." + body)`` (when the webhook names a secret):
  a receiver checks it with :func:`verify_signature` (or the same three lines in its
  own language) and rejects old timestamps to stop replays.

Each receiver has its own queue and workers, so one receiver that is down never delays
another; a notification is retried until it is acknowledged (2xx) or ``give_up_after``
passes, and then handed back to the engine, which offers it again at the group's next
flush with the same idempotency key: at-least-once delivery.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import httpx

from services.alerting.config import Receiver, SlackConfig, WebhookConfig
from services.alerting.engine import AlertState, Notification

_ZERO_TIME = "0001-01-01T00:00:00Z"
_COLORS = {"firing": "danger", "resolved": "good"}


def rfc3339(t: float | None) -> str:
    if t is None:
        return _ZERO_TIME
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def alert_json(a: AlertState, external_url: str) -> dict[str, Any]:
    return {
        "status": "resolved" if a.state == "resolved" else "firing",
        "labels": a.labels, "annotations": a.annotations,
        "startsAt": rfc3339(a.starts_at or a.active_at),
        "endsAt": rfc3339(a.ends_at if a.state == "resolved" else None),
        "generatorURL": f"{external_url}/api/v2/alerts?fingerprint={a.fingerprint}",
        "fingerprint": a.fingerprint,
    }


def webhook_payload(note: Notification, external_url: str, send_resolved: bool = True) -> dict[str, Any]:
    """Alertmanager's webhook body (``version: "4"``)."""
    alerts = [a for a in note.alerts if send_resolved or a.state != "resolved"]
    return {
        "version": "4",
        "groupKey": note.group_key,
        "truncatedAlerts": 0,
        "status": note.status,
        "receiver": note.receiver,
        "groupLabels": note.group_labels,
        "commonLabels": _common([a.labels for a in alerts]),
        "commonAnnotations": _common([a.annotations for a in alerts]),
        "externalURL": external_url,
        "alerts": [alert_json(a, external_url) for a in alerts],
    }


def slack_payload(note: Notification, cfg: SlackConfig, external_url: str) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` plus one attachment per alert)."""
    firing = [a for a in note.alerts if a.state == "firing"]
    title = f"[{note.status.upper()}{':' + str(len(firing)) if firing else ''}] " + \
        " ".join(f"{k}={v}" for k, v in sorted(note.group_labels.items()))
    attachments = []
    for a in note.alerts:
        attachments.append({
            "color": _COLORS["resolved" if a.state == "resolved" else "firing"],
            "title": f"{a.labels.get('alertname', a.rule)} ({a.state})",
            "title_link": f"{external_url}/api/v2/alerts?fingerprint={a.fingerprint}",
            "text": a.annotations.get("summary") or a.annotations.get("description") or "",
            "fields": [{"title": k, "value": v, "short": True} for k, v in sorted(a.labels.items())],
            "footer": a.annotations.get("runbook_url", ""),
            "ts": int(a.starts_at or a.active_at),
        })
    body: dict[str, Any] = {"text": title, "username": cfg.username, "attachments": attachments}
    if cfg.channel:
        body["channel"] = cfg.channel
    return body


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, headers: dict[str, str], body: bytes, max_age_s: float = 300.0) -> bool:
    """What a receiver does: recompute the HMAC over timestamp and body, compare in
    constant time, refuse stale timestamps."""
    lower = {k.lower(): v for k, v in headers.items()}
    ts, sig = lower.get("x-argus-timestamp"), lower.get("x-argus-signature")
    if not ts or not sig:
        return False
    try:
        if abs(time.time() - float(ts)) > max_age_s:
            return False
    except ValueError:
        return False
    return hmac.compare_digest(sign(secret, ts, body), sig)


@dataclass
class DeliveryPolicy:
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 5.0
    give_up_after_s: float = 300.0
    workers_per_receiver: int = 4


class Deliverer:
    """One queue per receiver; each notification goes to every endpoint of its
    receiver, each endpoint retried on its own until it acknowledges."""

    def __init__(self, receivers: tuple[Receiver, ...], secrets: dict[str, bytes], external_url: str,
                 policy: DeliveryPolicy, on_done: Callable[[Notification, bool, dict[str, Any]], Awaitable[None]],
                 metrics: Any = None, log: Any = None) -> None:
        self.receivers = {r.name: r for r in receivers}
        self.secrets = secrets
        self.external_url = external_url
        self.policy = policy
        self.on_done = on_done
        self.metrics = metrics
        self.log = log
        self.queues: dict[str, asyncio.Queue[Notification]] = {}
        self.tasks: list[asyncio.Task] = []
        self.client: httpx.AsyncClient | None = None
        self.in_flight = 0

    async def start(self) -> None:
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64))
        for name in self.receivers:
            q: asyncio.Queue[Notification] = asyncio.Queue()
            self.queues[name] = q
            for _ in range(self.policy.workers_per_receiver):
                self.tasks.append(asyncio.create_task(self._worker(q), name=f"deliver-{name}"))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self.client is not None:
            await self.client.aclose()

    def submit(self, note: Notification) -> None:
        self.in_flight += 1
        self.queues[note.receiver].put_nowait(note)

    async def _worker(self, q: asyncio.Queue[Notification]) -> None:
        while True:
            note = await q.get()
            try:
                receiver = self.receivers[note.receiver]
                endpoints: list[tuple[str, WebhookConfig]] = [("webhook", c) for c in receiver.webhook_configs] + \
                    [("slack", c) for c in receiver.slack_configs]
                results = await asyncio.gather(*(self._deliver(note, kind, cfg) for kind, cfg in endpoints))
                ok = all(r["ok"] for r in results)
                await self.on_done(note, ok, {"attempts": sum(r["attempts"] for r in results)})
            finally:
                self.in_flight -= 1
                q.task_done()

    def request(self, note: Notification, kind: str, cfg: WebhookConfig) -> tuple[bytes, dict[str, str]]:
        if kind == "slack":
            payload = slack_payload(note, cfg, self.external_url)  # type: ignore[arg-type]
        else:
            payload = webhook_payload(note, self.external_url, cfg.send_resolved)
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": note.idempotency_key,
                   "User-Agent": "argus-alerting/1"}
        if cfg.secret:
            ts = str(int(time.time()))
            headers["X-Argus-Timestamp"] = ts
            headers["X-Argus-Signature"] = sign(self.secrets[cfg.secret], ts, body)
        return body, headers

    async def _deliver(self, note: Notification, kind: str, cfg: WebhookConfig) -> dict[str, Any]:
        if note.status == "resolved" and not cfg.send_resolved:
            return {"ok": True, "attempts": 0}
        assert self.client is not None
        deadline = time.monotonic() + self.policy.give_up_after_s
        backoff = self.policy.initial_backoff_s
        attempts = 0
        while True:
            attempts += 1
            body, headers = self.request(note, kind, cfg)  # re-signed per attempt (fresh timestamp)
            error = ""
            try:
                resp = await self.client.post(cfg.url, content=body, headers=headers, timeout=cfg.timeout)
                if 200 <= resp.status_code < 300:
                    if self.metrics:
                        self.metrics.inc("argus_notifications_total", receiver=note.receiver, outcome="delivered")
                    return {"ok": True, "attempts": attempts}
                error = f"HTTP {resp.status_code}"
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 409, 425, 429):
                    error += " (not retried: the receiver rejects this request)"
                    if self.log:
                        self.log.error("alerting.delivery_rejected", receiver=note.receiver, url=cfg.url, error=error,
                                       idempotency_key=note.idempotency_key)
                    if self.metrics:
                        self.metrics.inc("argus_notifications_total", receiver=note.receiver, outcome="rejected")
                    return {"ok": False, "attempts": attempts}
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if self.metrics:
                self.metrics.inc("argus_notifications_total", receiver=note.receiver, outcome="retried")
            if self.log:
                self.log.warning("alerting.delivery_retry", receiver=note.receiver, url=cfg.url, error=error,
                                 attempt=attempts, idempotency_key=note.idempotency_key)
            if time.monotonic() + backoff > deadline:
                if self.metrics:
                    self.metrics.inc("argus_notifications_total", receiver=note.receiver, outcome="gave_up")
                return {"ok": False, "attempts": attempts}
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self.policy.max_backoff_s)
