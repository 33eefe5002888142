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

import json
import time
from typing import Any

import faust
from aiokafka import TopicPartition

from services.alerting.config import AlertingConfig
from services.alerting.records import alert_record, new_silence_record
from services.alerting.runtime import TABLES, AlertingRuntime
from services.alerting.settings import AlertingSettings
from services.alerting.signals import (
    SOURCES,
    SignalExtractor,
    SilenceGate,
    dead_letter_signal,
    drift_signal,
    feedback_signal,
    is_negative,
    response_signal,
    silence_from_record,
)
from services.alerting.windows import Signal
from services.common.codec import SerializationError
from services.common.faust_support import DeadLetterWriter, faust_readiness, heartbeat, make_app, report_lag
from services.common.governance import Refused, trust_path
from services.common.health import HealthServer, Readiness
from services.common.kafka import group_lag
from services.common.labels import MatcherError
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import dead_letter_topics, get_codec

__all__ = [
    "SOURCES",
    "AlertingWiring",
    "alert_record",
    "create_app",
    "dead_letter_signal",
    "drift_signal",
    "feedback_signal",
    "is_negative",
    "new_silence_record",
    "response_signal",
    "silence_from_record",
]


class AlertingWiring:
    """What the agents call, kept on the app (``app.argus_alerting``) so tests can drive
    the agents with ``agent.test_context()`` and swap the outputs for collectors."""

    def __init__(self, runtime: AlertingRuntime, extractor: SignalExtractor, dlq: Any, emit: Any) -> None:
        self.runtime = runtime
        self.extractor = extractor
        self.dlq = dlq  # DeadLetterWriter: send(event, reason, error_type), valid(event)
        self.emit = emit  # emit(body: dict) -> the signals topic


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
    codecs = {key: get_codec(key) for key in SOURCES}
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
        for name in TABLES
    }
    signals_tp = TopicPartition(signals.get_topic_name(), 0)

    def is_owner() -> bool:
        return (
            signals_tp in app.consumer.assignment() and app.tables.recovery.completed.is_set() and not app.rebalancing
        )

    async def send_alert(key: bytes, value: bytes) -> None:
        await (await alerts_topic.send(key=key, value=value))

    async def emit(body: dict[str, Any]) -> None:
        await signals.send(key=b"signals", value=json.dumps(body, separators=(",", ":")).encode())

    runtime = AlertingRuntime(
        settings, config, tables, send_alert, is_owner, metrics, log, get_codec("alerts"), alerts_topic.get_topic_name()
    )
    wiring = AlertingWiring(
        runtime, SignalExtractor(), DeadLetterWriter(app, k, "alerting", settings.app_id, metrics), emit
    )
    app.argus_alerting = wiring

    # -- extract: one agent per source topic ------------------------------------------
    silences = SilenceGate(trust_path(settings.governance))

    def make_extractor(key: str) -> None:
        async def extract(stream: Any) -> None:
            async for event in stream.events():
                metrics.inc("argus_messages_consumed_total", topic=event.message.topic)
                try:
                    record = codecs[key].decode_plain(event.value)
                    if key == "alert-silences":
                        silences.check(record)  # who mutes alerts is proven, or nothing is muted
                    signal = wiring.extractor.signal(key, record)
                except Refused as exc:
                    metrics.inc("argus_governance_refused_total", topic=event.message.topic, reason=exc.kind)
                    log.error("alerting.silence_refused", reason=exc.kind, error=str(exc))
                    await wiring.dlq.send(event, f"refused: {exc}", f"Refused.{exc.kind}")
                    continue
                except (SerializationError, MatcherError) as exc:
                    await wiring.dlq.send(event, str(exc), "InvalidMessage." + type(exc).__name__)
                    continue
                wiring.dlq.valid(event)
                await wiring.emit(signal.to_json() if isinstance(signal, Signal) else signal)

        extract.__name__ = f"extract_{key.replace('-', '_')}"
        app.agent(sources[key], name=f"{settings.app_id}.extract.{key}")(extract)

    for key in SOURCES:
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
            await wiring.emit(dead_letter_signal(d, event.message.topic, time.time()).to_json())

    # -- the engine, on the owner of the signals partition ------------------------------
    @app.agent(signals, name=f"{settings.app_id}.engine")
    async def evaluate_signals(stream: Any) -> None:
        async for value in stream:
            wiring.runtime.on_signal(json.loads(value))

    @app.task
    async def driver() -> None:
        await wiring.runtime.drive()

    @app.timer(settings.lag_interval_s, name=f"{settings.app_id}.lag")
    async def watch_lag() -> None:
        await wiring.runtime.observe_lag(lambda: group_lag(k, settings.lag_groups))

    # -- health and the API the CLI reads -------------------------------------------------
    progress = heartbeat(app)
    lag = report_lag(app, k, metrics)

    async def readiness() -> Readiness:
        return faust_readiness(
            app, settings.service_name, runtime.sink_healthy, "writes to argus.alerts failing", lag=lag
        )

    health = HealthServer(
        settings.health,
        metrics,
        lambda: progress["t"],
        readiness,
        routes={"/api/v2/alerts": runtime.api_alerts, "/api/v2/silences": runtime.api_silences},
        routes_token=settings.token(),
    )
    if settings.health_enabled:

        @app.task
        async def serve_health() -> None:
            port = await health.start()
            log.info("alerting.health", port=port)

    app.argus_health = health
    return app
