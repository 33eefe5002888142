"""What the faust-streaming services (drift, alerting) share: the app with the
platform's Kafka conventions, dead-lettering of undecodable events, and readiness.

Example::

    app = make_app("argus-drift", settings.kafka, partitions=3, session_timeout_s=10)
    dlq = DeadLetterWriter(app, settings.kafka, service="drift", group=settings.app_id)
    ...
    except SerializationError as exc:
        await dlq.send("inference-requests", event, str(exc))
"""
from __future__ import annotations

import time
from typing import Any, Callable

import faust

from services.common.health import Readiness
from services.common.logging import get_logger
from services.common.pipeline import Message, dead_letter_headers, dead_letter_record
from services.common.registry import get_codec
from services.common.settings import KafkaSettings


def make_app(app_id: str, kafka: KafkaSettings, partitions: int, session_timeout_s: float) -> faust.App:
    """A faust app on raw bytes (Avro is decoded by the registry codecs), acks=all,
    no web server (each service runs the platform's health endpoint instead)."""
    return faust.App(
        app_id,
        broker=f"kafka://{kafka.bootstrap_servers}",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=1,
        broker_session_timeout=session_timeout_s,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        producer_acks=-1,
    )


class DeadLetterWriter:
    """Sends an undecodable event to its topic's dead-letter topic, whole, with the reason."""

    def __init__(self, app: faust.App, kafka: KafkaSettings, service: str, group: str, metrics: Any = None) -> None:
        self.app, self.kafka, self.service, self.group, self.metrics = app, kafka, service, group, metrics
        self.log = get_logger(f"argus.{service}")
        self._topics: dict[str, Any] = {}

    def topic(self, key: str) -> Any:
        if key not in self._topics:
            self._topics[key] = self.app.topic(self.kafka.topic(f"{key}-dlq"), key_type=bytes, value_type=bytes)
        return self._topics[key]

    async def send(self, key: str, event: Any, reason: str, error_type: str = "InvalidMessage.SerializationError") -> None:
        m = event.message
        msg = Message(m.topic, m.partition, m.offset, m.key, m.value, int(m.timestamp * 1000) if m.timestamp else 0)
        value = get_codec(f"{key}-dlq").encode(dead_letter_record(msg, reason, error_type, self.group, self.service))
        await (await self.topic(key).send(key=m.key, value=value, headers=dead_letter_headers(msg, reason, error_type)))
        if self.metrics is not None:
            self.metrics.inc("argus_messages_dead_lettered_total", topic=m.topic, error_type=error_type)
        self.log.warning(f"{self.service}.dead_lettered", topic=m.topic, partition=m.partition, offset=m.offset, reason=reason)


def faust_readiness(app: faust.App, service: str, sink_healthy: bool, sink_problem: str,
                    extra_check: Callable[[], str] | None = None) -> Readiness:
    """Ready = tables recovered, partitions assigned, not rebalancing, writes succeeding."""
    recovered = app.tables.recovery.completed.is_set()
    assigned = sorted(str(tp) for tp in app.consumer.assignment())
    connected = recovered and bool(assigned)
    extra = extra_check() if extra_check else ""
    detail = ("rebalancing" if app.rebalancing else "recovering tables" if not recovered
              else "no partitions assigned" if not assigned else sink_problem if not sink_healthy else extra)
    ready = connected and not app.rebalancing and sink_healthy and not extra
    return Readiness(ready, service, connected, sink_healthy, assigned, {}, {}, detail)


def heartbeat(app: faust.App, interval_s: float = 1.0) -> dict[str, float]:
    """Liveness: a timer that stamps the time while faust's event loop advances."""
    progress = {"t": time.time()}

    @app.timer(interval_s, name=f"{app.conf.id}.heartbeat")
    async def _beat() -> None:
        progress["t"] = time.time()

    return progress
