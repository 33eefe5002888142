"""The alerting service as a faust-streaming application.

    responses / feedback / drift events / dead-letter topics / silences
        -> extract (decode; invalid -> the topic's dead-letter topic; reduce to a Signal)
        -> <app id>-signals (internal topic, ONE partition: every signal reaches one
           engine, in order; a second worker is a hot standby that takes over on a
           rebalance, as Alertmanager instances are not sharded either)
        -> AlertEngine (windows, rules, alert states, silences, inhibition, groups,
           notification log)
        -> alert state changes and sent notifications on argus.alerts (logged to
           ClickHouse by the ingest service); webhooks / Slack to subscribers

State that must survive a restart is in three faust tables backed by changelog topics
(one partition each, co-located with the signals topic): ``alerting-alerts`` (active
alerts), ``alerting-silences`` and ``alerting-nflog`` (what each receiver was told and
when). A notification is logged only after the receiver acknowledged it, so a crash in
between re-sends it with the same idempotency key (at-least-once), and a restart after
it sends nothing again.

The engine runs on the worker that owns partition 0 of the signals topic; a driver task
there evaluates windows touched by new signals (at most every ``min_evaluation_gap_s``),
re-evaluates every window each ``evaluation_interval_s`` and flushes aggregation groups
exactly when their ``group_wait``/``group_interval`` is due.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict, deque
from typing import Any

import faust
from aiohttp import web
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from services.alerting.config import AlertingConfig
from services.alerting.engine import AlertChange, AlertEngine, AlertState, Notification, Silence, alert_event_id
from services.alerting.notify import Deliverer, DeliveryPolicy
from services.alerting.settings import AlertingSettings
from services.alerting.windows import Signal
from services.common.codec import SerializationError
from services.common.faust_support import DeadLetterWriter, faust_readiness, heartbeat, make_app, report_lag
from services.common.health import HealthServer, Readiness
from services.common.kafka import group_lag
from services.common.labels import MatcherError
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import dead_letter_topics, get_codec

SOURCES = ("inference-responses", "feedback", "drift-events", "alert-silences")
_NEGATIVE_LABELS = {"bad", "incorrect", "harmful", "unhelpful", "wrong"}


def response_signal(r: dict[str, Any], now: float) -> Signal:
    return Signal(
        "responses",
        now,
        {"model": r["model"], "model_version": r["model_version"], "tenant": r["tenant"]},
        {
            "error": 0.0 if r["status"] == "ok" else 1.0,
            "latency_ms": float(r["latency_ms"]),
            "tokens": float((r.get("input_tokens") or 0) + (r.get("output_tokens") or 0)),
            "confidence": r.get("mean_logprob"),
        },
    )


def is_negative(f: dict[str, Any]) -> bool:
    score, kind = f.get("score"), f.get("kind")
    if kind == "thumbs" and score is not None:
        return score < 0.5
    if kind == "rating" and score is not None:
        return score <= 2
    return (f.get("label") or "").lower() in _NEGATIVE_LABELS


def feedback_signal(f: dict[str, Any], model: tuple[str, str] | None, now: float) -> Signal:
    m, v = model or ("unknown", "unknown")
    return Signal(
        "feedback",
        now,
        {"model": m, "model_version": v, "tenant": f["tenant"], "source": f.get("source") or ""},
        {"negative": 1.0 if is_negative(f) else 0.0},
    )


def drift_signal(d: dict[str, Any], now: float) -> Signal:
    return Signal(
        "drift",
        now,
        {
            "model": d["model"],
            "model_version": d["model_version"],
            "feature": d["feature"],
            "detector": d["detector"],
            "drift_severity": d["severity"],
        },
        {"statistic": float(d["statistic"]), "threshold": float(d["threshold"])},
    )


def dead_letter_signal(d: dict[str, Any] | None, topic: str, now: float) -> Signal:
    if d is None:  # even an undecodable dead letter is a dead letter
        return Signal(
            "dead_letters",
            now,
            {
                "original_topic": topic.removesuffix(".dlq"),
                "service": "",
                "error_type": "undecodable",
                "consumer_group": "",
            },
            {},
        )
    return Signal(
        "dead_letters",
        now,
        {
            "original_topic": d["original_topic"],
            "service": d["service"],
            "error_type": d["error_type"],
            "consumer_group": d["consumer_group"],
        },
        {},
    )


def _seconds(v: Any) -> float:
    """A timestamp-millis field as seconds (epoch ms, or a datetime from another writer version)."""
    return v.timestamp() if hasattr(v, "timestamp") else v / 1000


def silence_from_record(s: dict[str, Any]) -> dict[str, Any]:
    """A Silence record as the engine's JSON (matchers checked: a bad one raises MatcherError)."""
    out = {
        "id": str(s["silence_id"]),
        "action": s["action"],
        "matchers": list(s["matchers"]),
        "starts_at": _seconds(s["starts_at"]),
        "ends_at": _seconds(s["ends_at"]),
        "created_by": s["created_by"],
        "comment": s["comment"],
    }
    if out["action"] != "expire":
        if not out["matchers"]:
            raise MatcherError("a silence needs at least one matcher (it would mute every alert)")
        Silence(out["id"], out["matchers"], 0, 0, "", "").parsed()
    return out


def alert_record(
    a: AlertState,
    status: str,
    at: float,
    receiver: str | None = None,
    group_key: str | None = None,
    external_url: str = "",
) -> dict[str, Any]:
    return {
        "event_id": alert_event_id(a.fingerprint, status, at, receiver),
        "fingerprint": a.fingerprint,
        "rule": a.rule,
        "status": status,
        "severity": a.severity,
        "labels": a.labels,
        "annotations": a.annotations,
        "value": a.value,
        "starts_at": int((a.starts_at or a.active_at) * 1000),
        "ends_at": int(a.ends_at * 1000) if a.ends_at is not None and a.state == "resolved" else None,
        "group_key": group_key,
        "receiver": receiver,
        "generator_url": f"{external_url}/api/v2/alerts?fingerprint={a.fingerprint}" if external_url else None,
        "emitted_at": int(at * 1000),
    }


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def create_app(settings: AlertingSettings, config: AlertingConfig) -> faust.App:
    k = settings.kafka
    log = get_logger("argus.alerting")
    missing = config.secrets_needed() - set(settings.webhook_secrets)
    if missing:
        raise ValueError(
            f"webhook secrets named in the config are not set in ARGUS_ALERTING_WEBHOOK_SECRETS: {sorted(missing)}"
        )
    app = make_app(settings.app_id, k, settings.partitions, settings.broker_session_timeout_s)
    metrics = Metrics(settings.service_name)
    dlq = DeadLetterWriter(app, k, "alerting", settings.app_id, metrics)
    codecs = {key: get_codec(key) for key in SOURCES}
    alerts_codec = get_codec("alerts")
    dl_codec = get_codec("inference-responses-dlq")
    sources = {key: app.topic(k.topic(key), key_type=bytes, value_type=bytes) for key in SOURCES}
    dlq_topic_names = [k.topic(t) for t in dead_letter_topics()]
    signals = app.topic(
        f"{k.topic_prefix}{settings.app_id}-signals", internal=True, partitions=1, key_type=bytes, value_type=bytes
    )
    app.argus_internal_topics = {signals.get_topic_name(): 1}  # created before the worker subscribes
    alerts_topic = app.topic(k.topic("alerts"), key_type=bytes, value_type=bytes)
    tables = {
        name: app.Table(
            f"alerting-{name}", default=None, partitions=1, use_partitioner=True, key_type=bytes, value_type=bytes
        )
        for name in ("alerts", "silences", "nflog")
    }
    recent_models = _LRU(200_000)  # request_id -> (model, version), to label feedback

    state: dict[str, Any] = {"engine": None, "sink_healthy": True, "last_full": 0.0, "outbox": []}
    wake = asyncio.Event()
    held: deque[dict[str, Any]] = deque(maxlen=100_000)  # signals that arrived while no engine was running

    async def emit(sig: Signal | dict[str, Any]) -> None:
        body = sig.to_json() if isinstance(sig, Signal) else sig
        await signals.send(key=b"signals", value=json.dumps(body, separators=(",", ":")).encode())

    # -- extract: one agent per source topic ------------------------------------------
    def remember_model(r: dict[str, Any]) -> Signal:
        recent_models.put(r["request_id"], (r["model"], r["model_version"]))
        return response_signal(r, time.time())

    # feedback and responses are both keyed by request_id with the same partition count,
    # so the response a feedback item is about was seen by this worker
    to_signal = {
        "inference-responses": remember_model,
        "feedback": lambda f: feedback_signal(f, recent_models.get(f["request_id"]), time.time()),
        "drift-events": lambda d: drift_signal(d, time.time()),
        "alert-silences": lambda s: {"silence": silence_from_record(s)},  # a bad matcher raises MatcherError
    }

    def make_extractor(key: str) -> None:
        async def extract(stream: Any) -> None:
            async for event in stream.events():
                metrics.inc("argus_messages_consumed_total", topic=event.message.topic)
                try:
                    signal = to_signal[key](codecs[key].decode_plain(event.value))
                except (SerializationError, MatcherError) as exc:
                    await dlq.send(event, str(exc), "InvalidMessage." + type(exc).__name__)
                    continue
                dlq.valid(event)
                await emit(signal)

        extract.__name__ = f"extract_{key.replace('-', '_')}"
        app.agent(sources[key], name=f"{settings.app_id}.extract.{key}")(extract)

    for key in to_signal:
        make_extractor(key)

    @app.agent(
        app.topic(*dlq_topic_names, key_type=bytes, value_type=bytes), name=f"{settings.app_id}.extract.dead-letters"
    )
    async def extract_dead_letters(stream: Any) -> None:
        async for event in stream.events():
            metrics.inc("argus_messages_consumed_total", topic=event.message.topic)
            try:
                d = dl_codec.decode_plain(event.value)
            except SerializationError:
                d = None  # even an undecodable dead letter is a dead letter
            await emit(dead_letter_signal(d, event.message.topic, time.time()))

    # -- the engine, on the owner of the signals partition ------------------------------
    signals_tp = TopicPartition(signals.get_topic_name(), 0)

    def engine() -> AlertEngine | None:
        owner = (
            signals_tp in app.consumer.assignment() and app.tables.recovery.completed.is_set() and not app.rebalancing
        )
        if not owner:
            if state["engine"] is not None:
                log.info("alerting.engine_released")
                state["engine"] = None
            return None
        if state["engine"] is None:
            now = time.time()
            eng = AlertEngine(config, now)
            eng.restore(
                alerts=[json.loads(v) for v in tables["alerts"].values() if v],
                silences=[json.loads(v) for v in tables["silences"].values() if v],
                nflog=[(key.decode(), json.loads(v)) for key, v in tables["nflog"].items() if v],
                now=now,
            )
            state["engine"] = eng
            while held:
                apply_signal(eng, held.popleft())
            log.info(
                "alerting.engine_started",
                alerts=len(eng.alerts),
                silences=len(eng.silences),
                notification_log=len(eng.nflog),
            )
        return state["engine"]

    @app.agent(signals, name=f"{settings.app_id}.engine")
    async def evaluate_signals(stream: Any) -> None:
        async for value in stream:
            body = json.loads(value)
            eng = engine()
            if eng is None:
                # a rebalance began while this event was in flight: keep it for the engine
                # (waiting here would hold the rebalance up; dropping it would lose a signal)
                held.append(body)
                continue
            apply_signal(eng, body)
            wake.set()

    def apply_signal(eng: AlertEngine, body: dict[str, Any]) -> None:
        now = time.time()
        if "silence" in body:
            s = body["silence"]
            if s["action"] == "expire":
                eng.expire_silence(s["id"], now)
            else:
                eng.add_silence(
                    Silence(s["id"], s["matchers"], s["starts_at"], s["ends_at"], s["created_by"], s["comment"]), now
                )
            log.info("alerting.silence", id=s["id"], action=s["action"], by=s["created_by"], matchers=s["matchers"])
        else:
            sig = Signal.from_json(body)
            eng.observe(sig, now)
            metrics.inc("argus_signals_total", source=sig.source)

    # -- delivery and the driver ----------------------------------------------------------
    def persist(eng: AlertEngine) -> None:
        for name, changed in eng.take_dirty().items():
            table = tables[name]
            for key, v in changed.items():
                if v is None:
                    if key.encode() in table:
                        del table[key.encode()]
                else:
                    table[key.encode()] = json.dumps(v, separators=(",", ":")).encode()

    publish_lock = asyncio.Lock()

    async def publish(records: list[dict[str, Any]]) -> None:
        """Alert records to argus.alerts, in order; what fails stays queued and is retried
        with the next records (the driver and delivery callbacks both publish: one at a time)."""
        state["outbox"].extend(records)
        async with publish_lock:
            while state["outbox"]:
                rec = state["outbox"][0]
                try:
                    await (await alerts_topic.send(key=rec["fingerprint"].encode(), value=alerts_codec.encode(rec)))
                except KafkaError as exc:
                    state["sink_healthy"] = False
                    log.warning("alerting.publish_failed", error=str(exc), queued=len(state["outbox"]))
                    return
                state["outbox"].pop(0)
                state["sink_healthy"] = True
                metrics.inc("argus_messages_produced_total", topic=alerts_topic.get_topic_name())

    async def delivered(note: Notification, ok: bool, info: dict[str, Any]) -> None:
        eng = state["engine"]
        now = time.time()
        metrics.observe("argus_notification_seconds", now - note.created_at, receiver=note.receiver)
        if eng is None:  # ownership moved while delivering: the new owner's nflog decides
            return
        if ok:
            eng.delivered(note, now)
            persist(eng)
            log.info(
                "alerting.notified",
                receiver=note.receiver,
                group=note.group_key,
                status=note.status,
                firing=len(note.firing),
                resolved=len(note.resolved),
                attempts=info.get("attempts"),
                idempotency_key=note.idempotency_key,
            )
            await publish(
                [
                    alert_record(
                        a,
                        "resolved" if a.state == "resolved" else "firing",
                        now,
                        note.receiver,
                        note.group_key,
                        settings.external_url,
                    )
                    for a in note.alerts
                ]
            )
        else:
            eng.delivery_failed(note)
            log.error(
                "alerting.notification_not_delivered",
                receiver=note.receiver,
                group=note.group_key,
                idempotency_key=note.idempotency_key,
                detail="offered again at the group's next flush",
            )
        wake.set()

    deliverer = Deliverer(
        config.receivers,
        {n: s.get_secret_value().encode() for n, s in settings.webhook_secrets.items()},
        settings.external_url,
        DeliveryPolicy(
            settings.delivery_initial_backoff_s, settings.delivery_max_backoff_s, settings.delivery_give_up_after_s
        ),
        delivered,
        metrics,
        log,
    )

    async def step(eng: AlertEngine) -> None:
        now = time.time()
        everything = now - state["last_full"] >= settings.evaluation_interval_s
        if everything:
            state["last_full"] = now
        changes: list[AlertChange] = eng.evaluate(now, everything)
        notes, muted = eng.flush(now)
        persist(eng)
        for c in changes + muted:
            metrics.inc("argus_alert_transitions_total", rule=c.alert.rule, status=c.status)
            log.info(
                "alerting.alert",
                rule=c.alert.rule,
                status=c.status,
                fingerprint=c.alert.fingerprint,
                labels=c.alert.labels,
                value=c.alert.value,
            )
        for n in notes:
            deliverer.submit(n)
        await publish(
            [alert_record(c.alert, c.status, c.at, external_url=settings.external_url) for c in changes + muted]
        )
        for st in ("pending", "firing", "resolved"):
            metrics.set("argus_alerts_active", sum(1 for a in eng.alerts.values() if a.state == st), state=st)
        metrics.set("argus_silences_active", sum(1 for s in eng.silences.values() if s.active(now)))
        metrics.set("argus_in_flight", deliverer.in_flight)

    @app.task
    async def driver() -> None:
        """Steps the engine: when a group's flush is due (exactly then), when new signals
        arrived (at most every ``min_evaluation_gap_s``) and every ``evaluation_interval_s``."""
        await deliverer.start()
        while True:
            wake.clear()
            eng = engine()
            if eng is not None:
                await step(eng)
            now = time.time()
            earliest_eval = now + settings.min_evaluation_gap_s
            deadline = state["last_full"] + settings.evaluation_interval_s
            due = eng.next_due() if eng is not None else None
            if due is not None:
                deadline = min(deadline, due)
            try:
                await asyncio.wait_for(wake.wait(), timeout=max(deadline - now, 0.0))
            except asyncio.TimeoutError:
                continue  # a flush or the periodic evaluation is due now
            # new signals: evaluate them, but not more often than the gap (and never past a due flush)
            pause = min(earliest_eval, deadline) - time.time()
            if pause > 0:
                await asyncio.sleep(pause)

    @app.timer(settings.lag_interval_s, name=f"{settings.app_id}.lag")
    async def watch_lag() -> None:
        eng = engine()
        if eng is None or "consumer_lag" not in eng.rules_by_source:
            return
        try:
            now = time.time()
            for group, topics in (await group_lag(k, settings.lag_groups)).items():
                eng.observe(Signal("consumer_lag", now, {"group": group}, {"lag": float(sum(topics.values()))}), now)
                metrics.inc("argus_signals_total", source="consumer_lag")
        except KafkaError as exc:
            log.warning("alerting.lag_unavailable", error=str(exc))
        wake.set()

    # -- health and the API the CLI reads -------------------------------------------------
    progress = heartbeat(app)
    lag = report_lag(app, k, metrics)

    async def readiness() -> Readiness:
        return faust_readiness(
            app, settings.service_name, state["sink_healthy"], "writes to argus.alerts failing", lag=lag
        )

    async def api_alerts(request: web.Request) -> web.Response:
        eng = engine()
        if eng is None:
            return web.json_response({"error": "this worker does not own the alerting engine"}, status=503)
        out = eng.active_alerts(time.time())
        fp = request.query.get("fingerprint")
        return web.json_response([a for a in out if fp is None or a["fingerprint"] == fp])

    async def api_silences(_: web.Request) -> web.Response:
        eng = engine()
        if eng is None:
            return web.json_response({"error": "this worker does not own the alerting engine"}, status=503)
        now = time.time()
        return web.json_response([s.to_json() | {"active": s.active(now)} for s in eng.silences.values()])

    health = HealthServer(
        settings.health,
        metrics,
        lambda: progress["t"],
        readiness,
        routes={"/api/v2/alerts": api_alerts, "/api/v2/silences": api_silences},
        routes_token=settings.token(),
    )
    if settings.health_enabled:

        @app.task
        async def serve_health() -> None:
            port = await health.start()
            log.info("alerting.health", port=port)

    app.argus_health = health
    return app


def new_silence_record(
    matchers: list[str],
    starts_at: float,
    ends_at: float,
    author: str,
    comment: str,
    silence_id: str | None = None,
    action: str = "create",
) -> dict[str, Any]:
    """A Silence record for ``argus alerts silence`` (published on argus.alerts.silences)."""
    now = time.time()
    return {
        "event_id": str(uuid.uuid4()),
        "silence_id": silence_id or str(uuid.uuid4()),
        "action": action,
        "matchers": matchers,
        "starts_at": int(starts_at * 1000),
        "ends_at": int(ends_at * 1000),
        "created_by": author,
        "comment": comment,
        "emitted_at": int(now * 1000),
    }
