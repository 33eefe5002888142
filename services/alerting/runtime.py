"""The alerting engine's runtime, apart from faust: who owns the engine, the signals held
while nobody does, persistence into the state tables, the outbox to argus.alerts, delivery
callbacks, the driver's step and the API. ``create_app`` (:mod:`services.alerting.app`)
wires it to topics and tables; tests drive it with plain dicts and collectors, and the
app's agents with faust's ``agent.test_context()``.

- **Ownership**: the engine runs where ``is_owner()`` says (the worker holding partition 0
  of the signals topic, tables recovered, not rebalancing). Becoming owner restores the
  engine from the tables; losing it drops the engine (the next owner restores).
- **Held signals**: a signal that arrives while this worker is not the owner (a rebalance
  in flight) is kept, bounded, and applied when the engine starts: waiting would hold the
  rebalance up, dropping would lose it.
- **Outbox**: alert records go to argus.alerts in order; what fails stays queued and is
  retried with the next records; ``sink_healthy`` says whether the last write worked.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any, Awaitable, Callable, MutableMapping

from aiohttp import web
from aiokafka.errors import KafkaError

from services.alerting.config import AlertingConfig
from services.alerting.engine import AlertChange, AlertEngine, Notification, Silence
from services.alerting.notify import Deliverer, DeliveryPolicy
from services.alerting.records import alert_record
from services.alerting.settings import AlertingSettings
from services.alerting.windows import Signal
from services.common.metrics import Metrics

TABLES = ("alerts", "silences", "nflog")
# send(key, value) -> once the broker acknowledged the record
Send = Callable[[bytes, bytes], Awaitable[Any]]


class AlertingRuntime:
    def __init__(
        self,
        settings: AlertingSettings,
        config: AlertingConfig,
        tables: dict[str, MutableMapping[bytes, bytes]],
        send_alert: Send,
        is_owner: Callable[[], bool],
        metrics: Metrics,
        log: Any,
        alerts_codec: Any,
        alerts_topic_name: str = "argus.alerts",
    ) -> None:
        self.settings = settings
        self.config = config
        self.tables = tables
        self.send_alert = send_alert
        self.is_owner = is_owner
        self.metrics = metrics
        self.log = log
        self.alerts_codec = alerts_codec
        self.alerts_topic_name = alerts_topic_name
        self.current: AlertEngine | None = None
        self.held: deque[dict[str, Any]] = deque(maxlen=100_000)
        self.wake = asyncio.Event()
        self.outbox: list[dict[str, Any]] = []
        self.sink_healthy = True
        self.last_full = 0.0
        self._publish_lock = asyncio.Lock()
        self.deliverer = Deliverer(
            config.receivers,
            {n: s.get_secret_value().encode() for n, s in settings.webhook_secrets.items()},
            settings.external_url,
            DeliveryPolicy(
                settings.delivery_initial_backoff_s, settings.delivery_max_backoff_s, settings.delivery_give_up_after_s
            ),
            self.delivered,
            metrics,
            log,
        )

    # -- ownership ---------------------------------------------------------------------
    def engine(self) -> AlertEngine | None:
        """The engine when this worker owns it (restored from the tables on taking over)."""
        if not self.is_owner():
            if self.current is not None:
                self.log.info("alerting.engine_released")
                self.current = None
            return None
        if self.current is None:
            now = time.time()
            eng = AlertEngine(self.config, now)
            eng.restore(
                alerts=[json.loads(v) for v in self.tables["alerts"].values() if v],
                silences=[json.loads(v) for v in self.tables["silences"].values() if v],
                nflog=[(key.decode(), json.loads(v)) for key, v in self.tables["nflog"].items() if v],
                now=now,
            )
            self.current = eng
            while self.held:
                self.apply_signal(eng, self.held.popleft())
            self.log.info(
                "alerting.engine_started",
                alerts=len(eng.alerts),
                silences=len(eng.silences),
                notification_log=len(eng.nflog),
            )
        return self.current

    # -- signals -----------------------------------------------------------------------
    def on_signal(self, body: dict[str, Any]) -> None:
        """One signal from the signals topic: applied, or held while nobody owns the engine."""
        eng = self.engine()
        if eng is None:
            self.held.append(body)
            return
        self.apply_signal(eng, body)
        self.wake.set()

    def apply_signal(self, eng: AlertEngine, body: dict[str, Any]) -> None:
        now = time.time()
        if "silence" in body:
            s = body["silence"]
            old = eng.silences.get(s["id"])
            if s["action"] == "expire":
                eng.expire_silence(s["id"], now)
            elif old is not None and old.ends_at <= old.updated_at:
                # a person expired it: a replayed create or update (validly signed) cannot bring it back
                self.log.warning("alerting.silence_revival_ignored", id=s["id"], by=s["created_by"])
                return
            else:
                eng.add_silence(
                    Silence(s["id"], s["matchers"], s["starts_at"], s["ends_at"], s["created_by"], s["comment"]), now
                )
            self.log.info(
                "alerting.silence", id=s["id"], action=s["action"], by=s["created_by"], matchers=s["matchers"]
            )
        else:
            sig = Signal.from_json(body)
            eng.observe(sig, now)
            self.metrics.inc("argus_signals_total", source=sig.source)

    def persist(self, eng: AlertEngine) -> None:
        for name, changed in eng.take_dirty().items():
            table = self.tables[name]
            for key, v in changed.items():
                if v is None:
                    if key.encode() in table:
                        del table[key.encode()]
                else:
                    table[key.encode()] = json.dumps(v, separators=(",", ":")).encode()

    # -- output ------------------------------------------------------------------------
    async def publish(self, records: list[dict[str, Any]]) -> None:
        """Alert records to argus.alerts, in order; what fails stays queued and is retried
        with the next records (the driver and delivery callbacks both publish: one at a time)."""
        self.outbox.extend(records)
        async with self._publish_lock:
            while self.outbox:
                rec = self.outbox[0]
                try:
                    await self.send_alert(rec["fingerprint"].encode(), self.alerts_codec.encode(rec))
                except KafkaError as exc:
                    self.sink_healthy = False
                    self.log.warning("alerting.publish_failed", error=str(exc), queued=len(self.outbox))
                    return
                self.outbox.pop(0)
                self.sink_healthy = True
                self.metrics.inc("argus_messages_produced_total", topic=self.alerts_topic_name)

    async def delivered(self, note: Notification, ok: bool, info: dict[str, Any]) -> None:
        eng = self.current
        now = time.time()
        self.metrics.observe("argus_notification_seconds", now - note.created_at, receiver=note.receiver)
        if eng is None:  # ownership moved while delivering: the new owner's nflog decides
            return
        if ok:
            eng.delivered(note, now)
            self.persist(eng)
            self.log.info(
                "alerting.notified",
                receiver=note.receiver,
                group=note.group_key,
                status=note.status,
                firing=len(note.firing),
                resolved=len(note.resolved),
                attempts=info.get("attempts"),
                idempotency_key=note.idempotency_key,
            )
            await self.publish(
                [
                    alert_record(
                        a,
                        "resolved" if a.state == "resolved" else "firing",
                        now,
                        note.receiver,
                        note.group_key,
                        self.settings.external_url,
                    )
                    for a in note.alerts
                ]
            )
        else:
            eng.delivery_failed(note)
            self.log.error(
                "alerting.notification_not_delivered",
                receiver=note.receiver,
                group=note.group_key,
                idempotency_key=note.idempotency_key,
                detail="offered again at the group's next flush",
            )
        self.wake.set()

    # -- the driver --------------------------------------------------------------------
    async def step(self, eng: AlertEngine) -> None:
        now = time.time()
        everything = now - self.last_full >= self.settings.evaluation_interval_s
        if everything:
            self.last_full = now
        changes: list[AlertChange] = eng.evaluate(now, everything)
        notes, muted = eng.flush(now)
        self.persist(eng)
        for c in changes + muted:
            self.metrics.inc("argus_alert_transitions_total", rule=c.alert.rule, status=c.status)
            self.log.info(
                "alerting.alert",
                rule=c.alert.rule,
                status=c.status,
                fingerprint=c.alert.fingerprint,
                labels=c.alert.labels,
                value=c.alert.value,
            )
        for n in notes:
            self.deliverer.submit(n)
        await self.publish(
            [alert_record(c.alert, c.status, c.at, external_url=self.settings.external_url) for c in changes + muted]
        )
        for st in ("pending", "firing", "resolved"):
            self.metrics.set("argus_alerts_active", sum(1 for a in eng.alerts.values() if a.state == st), state=st)
        self.metrics.set("argus_silences_active", sum(1 for s in eng.silences.values() if s.active(now)))
        self.metrics.set("argus_in_flight", self.deliverer.in_flight)

    async def drive(self) -> None:
        """Steps the engine: when a group's flush is due (exactly then), when new signals
        arrived (at most every ``min_evaluation_gap_s``) and every ``evaluation_interval_s``."""
        s = self.settings
        await self.deliverer.start()
        while True:
            self.wake.clear()
            eng = self.engine()
            if eng is not None:
                await self.step(eng)
            now = time.time()
            earliest_eval = now + s.min_evaluation_gap_s
            deadline = self.last_full + s.evaluation_interval_s
            due = eng.next_due() if eng is not None else None
            if due is not None:
                deadline = min(deadline, due)
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=max(deadline - now, 0.0))
            except asyncio.TimeoutError:
                continue  # a flush or the periodic evaluation is due now
            # new signals: evaluate them, but not more often than the gap (and never past a due flush)
            pause = min(earliest_eval, deadline) - time.time()
            if pause > 0:
                await asyncio.sleep(pause)

    async def observe_lag(self, lag: Callable[[], Awaitable[dict[str, dict[str, int]]]]) -> None:
        """One ``consumer_lag`` signal per consumer group (``lag()`` gives group -> topic -> lag)."""
        eng = self.engine()
        if eng is None or "consumer_lag" not in eng.rules_by_source:
            return
        try:
            now = time.time()
            for group, topics in (await lag()).items():
                eng.observe(Signal("consumer_lag", now, {"group": group}, {"lag": float(sum(topics.values()))}), now)
                self.metrics.inc("argus_signals_total", source="consumer_lag")
        except KafkaError as exc:
            self.log.warning("alerting.lag_unavailable", error=str(exc))
        self.wake.set()

    # -- the API the CLI reads -----------------------------------------------------------
    async def api_alerts(self, request: web.Request) -> web.Response:
        eng = self.engine()
        if eng is None:
            return web.json_response({"error": "this worker does not own the alerting engine"}, status=503)
        out = eng.active_alerts(time.time())
        fp = request.query.get("fingerprint")
        return web.json_response([a for a in out if fp is None or a["fingerprint"] == fp])

    async def api_silences(self, _: web.Request) -> web.Response:
        eng = self.engine()
        if eng is None:
            return web.json_response({"error": "this worker does not own the alerting engine"}, status=503)
        now = time.time()
        return web.json_response([s.to_json() | {"active": s.active(now)} for s in eng.silences.values()])
