"""Delivery to subscribers: Alertmanager webhook payloads (version 4, so receivers
written for Alertmanager work unchanged) and Slack-compatible payloads, signed with
HMAC-SHA256 and retried with exponential backoff by the platform's one webhook client
(:mod:`services.common.webhook`: idempotency key, timestamped signature per attempt,
jittered backoff, no retry of a 4xx other than 408/429).

Each receiver has its own queue and workers, so one receiver that is down never delays
another; a notification is retried until it is acknowledged (2xx) or ``give_up_after``
passes, and then handed back to the engine, which offers it again at the group's next
flush with the same idempotency key: at-least-once delivery.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from services.alerting.config import Receiver, SlackConfig, WebhookConfig
from services.alerting.engine import AlertState, Notification
from services.common.webhook import RetryPolicy, WebhookClient

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
        "labels": a.labels,
        "annotations": a.annotations,
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
    title = f"[{note.status.upper()}{':' + str(len(firing)) if firing else ''}] " + " ".join(
        f"{k}={v}" for k, v in sorted(note.group_labels.items())
    )
    attachments = []
    for a in note.alerts:
        attachments.append(
            {
                "color": _COLORS["resolved" if a.state == "resolved" else "firing"],
                "title": f"{a.labels.get('alertname', a.rule)} ({a.state})",
                "title_link": f"{external_url}/api/v2/alerts?fingerprint={a.fingerprint}",
                "text": a.annotations.get("summary") or a.annotations.get("description") or "",
                "fields": [{"title": k, "value": v, "short": True} for k, v in sorted(a.labels.items())],
                "footer": a.annotations.get("runbook_url", ""),
                "ts": int(a.starts_at or a.active_at),
            }
        )
    body: dict[str, Any] = {"text": title, "username": cfg.username, "attachments": attachments}
    if cfg.channel:
        body["channel"] = cfg.channel
    return body


@dataclass
class DeliveryPolicy:
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 5.0
    give_up_after_s: float = 300.0
    workers_per_receiver: int = 4


class Deliverer:
    """One queue per receiver; each notification goes to every endpoint of its
    receiver, each endpoint retried on its own until it acknowledges."""

    def __init__(
        self,
        receivers: tuple[Receiver, ...],
        secrets: dict[str, bytes],
        external_url: str,
        policy: DeliveryPolicy,
        on_done: Callable[[Notification, bool, dict[str, Any]], Awaitable[None]],
        metrics: Any = None,
        log: Any = None,
    ) -> None:
        self.receivers = {r.name: r for r in receivers}
        self.secrets = secrets
        self.external_url = external_url
        self.policy = policy
        self.on_done = on_done
        self.metrics = metrics
        self.log = log
        self.queues: dict[str, asyncio.Queue[Notification]] = {}
        self.tasks: list[asyncio.Task] = []
        self.webhooks: WebhookClient | None = None
        self.in_flight = 0

    async def start(self) -> None:
        self.webhooks = WebhookClient(user_agent="argus-alerting/1")
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
        if self.webhooks is not None:
            await self.webhooks.aclose()

    def submit(self, note: Notification) -> None:
        self.in_flight += 1
        self.queues[note.receiver].put_nowait(note)

    async def _worker(self, q: asyncio.Queue[Notification]) -> None:
        while True:
            note = await q.get()
            try:
                receiver = self.receivers[note.receiver]
                endpoints: list[tuple[str, WebhookConfig]] = [("webhook", c) for c in receiver.webhook_configs] + [
                    ("slack", c) for c in receiver.slack_configs
                ]
                results = await asyncio.gather(*(self._deliver(note, kind, cfg) for kind, cfg in endpoints))
                ok = all(r["ok"] for r in results)
                await self.on_done(note, ok, {"attempts": sum(r["attempts"] for r in results)})
            finally:
                self.in_flight -= 1
                q.task_done()

    def body(self, note: Notification, kind: str, cfg: WebhookConfig) -> bytes:
        if kind == "slack":
            payload = slack_payload(note, cfg, self.external_url)  # type: ignore[arg-type]
        else:
            payload = webhook_payload(note, self.external_url, cfg.send_resolved)
        return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()

    async def _deliver(self, note: Notification, kind: str, cfg: WebhookConfig) -> dict[str, Any]:
        if note.status == "resolved" and not cfg.send_resolved:
            return {"ok": True, "attempts": 0}
        assert self.webhooks is not None

        def retried(attempt: int, error: str) -> None:
            if self.metrics:
                self.metrics.inc("argus_notifications_total", receiver=note.receiver, outcome="retried")
            if self.log:
                self.log.warning(
                    "alerting.delivery_retry",
                    receiver=note.receiver,
                    url=cfg.url,
                    error=error,
                    attempt=attempt,
                    idempotency_key=note.idempotency_key,
                )

        policy = RetryPolicy(self.policy.initial_backoff_s, self.policy.max_backoff_s, self.policy.give_up_after_s)
        result = await self.webhooks.post(
            cfg.url,
            self.body(note, kind, cfg),
            idempotency_key=note.idempotency_key,
            secret=self.secrets[cfg.secret] if cfg.secret else None,
            timeout=cfg.timeout,
            policy=policy,
            on_retry=retried,
        )
        if result.outcome == "rejected" and self.log:
            self.log.error(
                "alerting.delivery_rejected",
                receiver=note.receiver,
                url=cfg.url,
                error=result.error,
                idempotency_key=note.idempotency_key,
            )
        if self.metrics:
            self.metrics.inc("argus_notifications_total", receiver=note.receiver, outcome=result.outcome)
        return {"ok": result.ok, "attempts": result.attempts}
