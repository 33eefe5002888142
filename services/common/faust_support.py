"""What the faust-streaming services (drift, alerting) share: the app with the
platform's Kafka conventions, dead-lettering of undecodable events, and readiness.

Example::

    app = make_app("argus-drift", settings.kafka, partitions=3, session_timeout_s=10)
    dlq = DeadLetterWriter(app, settings.kafka, service="drift", group=settings.app_id)
    ...
    except SerializationError as exc:
        await dlq.send(event, str(exc))
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import faust

from services.common.dlq import DeadLetterPolicy, Message
from services.common.health import Readiness
from services.common.logging import get_logger
from services.common.settings import KafkaSettings


def make_app(app_id: str, kafka: KafkaSettings, partitions: int, session_timeout_s: float) -> faust.App:
    """A faust app on raw bytes (Avro is decoded by the registry codecs), acks=all,
    no web server (each service runs the platform's health endpoint instead).

    Its state lives in changelog topics (memory store); faust's own data directory
    holds only a version marker, kept out of the working directory
    (``ARGUS_FAUST_DATADIR``, the temp dir by default)."""
    root = Path(os.environ.get("ARGUS_FAUST_DATADIR") or Path(tempfile.gettempdir()) / "argus-faust")
    (root / app_id).mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        datadir=str(root / app_id),
        broker=",".join(f"kafka://{b.strip()}" for b in kafka.bootstrap_servers.split(",")),
        broker_credentials=faust_credentials(kafka),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=kafka.replicas()[0],
        broker_session_timeout=session_timeout_s,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        producer_acks=-1,
    )


def faust_credentials(kafka: KafkaSettings) -> Any:
    """The app's broker credentials from the same settings every aiokafka client uses:
    SASL (SCRAM/PLAIN) over TLS with the configured CA, TLS alone, or None (plaintext)."""
    from services.common.kafka import ssl_context

    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.password()
        if not (kafka.sasl_mechanism and kafka.sasl_username and password):
            raise ValueError("SASL needs sasl_mechanism, sasl_username and sasl_password (or sasl_password_file)")
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


class DeadLetterWriter:
    """The faust side of :class:`~services.common.dlq.DeadLetterPolicy`: sends an
    undecodable event to its topic's dead-letter topic, whole, with the reason, through
    the app's producer (retried until acknowledged)."""

    def __init__(self, app: faust.App, kafka: KafkaSettings, service: str, group: str, metrics: Any = None) -> None:
        self.app = app
        self.policy = DeadLetterPolicy(kafka=kafka, service=service, group=group, metrics=metrics)
        self._topics: dict[str, Any] = {}

    async def _send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        if topic not in self._topics:
            self._topics[topic] = self.app.topic(topic, key_type=bytes, value_type=bytes)
        await (await self._topics[topic].send(key=key, value=value, headers=headers))

    async def send(self, event: Any, reason: str, error_type: str = "InvalidMessage.SerializationError") -> None:
        m = event.message
        msg = Message(m.topic, m.partition, m.offset, m.key, m.value, int(m.timestamp * 1000) if m.timestamp else 0)
        await self.policy.send(self._send, msg, reason, error_type)

    def valid(self, event: Any) -> None:
        """Count a valid event in the storm guard's window."""
        m = event.message
        self.policy.record_valid(m.topic, m.partition)


def declare_internal_topics(app: faust.App, kafka: KafkaSettings) -> None:
    """Create an app's internal topics (``app.argus_internal_topics``: name -> partitions,
    set where the app is built) before its worker subscribes.

    faust declares an agent's internal topic while the consumer is already subscribing;
    when the broker's metadata does not list it yet, the topic is left out of the
    assignment ("Ignoring missing topic") until a metadata refresh minutes later, and the
    agent reads nothing meanwhile. Created beforehand, it is always assigned. Runs on a
    loop of its own (the worker then creates its own)."""
    import asyncio

    from services.common.kafka import ensure_named_topics

    loop = asyncio.new_event_loop()
    try:
        topics = getattr(app, "argus_internal_topics", {})
        loop.run_until_complete(ensure_named_topics(kafka, {name: (n, {}) for name, n in topics.items()}))
    finally:
        loop.close()


def report_lag(app: faust.App, kafka: KafkaSettings, metrics: Any, interval_s: float = 5.0) -> dict[str, int]:
    """Every ``interval_s``: the app's consumer-group lag per topic, as the broker sees it
    (``argus_consumer_lag`` with ``partition="all"``, and the returned dict, which
    :func:`faust_readiness` reports)."""
    from services.common.kafka import GroupLagReporter

    reporter = GroupLagReporter(kafka, app.conf.id, metrics, get_logger(f"argus.{metrics.service}"))

    @app.timer(interval_s, name=f"{app.conf.id}.report-lag")
    async def _report() -> None:
        await reporter.refresh()

    @app.on_before_shutdown.connect
    async def _close(app: faust.App, **_: Any) -> None:  # noqa: ARG001
        await reporter.close()

    return reporter.lag


def faust_readiness(
    app: faust.App,
    service: str,
    sink_healthy: bool,
    sink_problem: str,
    extra_check: Callable[[], str] | None = None,
    lag: dict[str, int] | None = None,
) -> Readiness:
    """Ready = tables recovered, partitions assigned, not rebalancing, writes succeeding."""
    recovered = app.tables.recovery.completed.is_set()
    assigned = sorted(str(tp) for tp in app.consumer.assignment())
    connected = recovered and bool(assigned)
    extra = extra_check() if extra_check else ""
    detail = (
        "rebalancing"
        if app.rebalancing
        else "recovering tables"
        if not recovered
        else "no partitions assigned"
        if not assigned
        else sink_problem
        if not sink_healthy
        else extra
    )
    ready = connected and not app.rebalancing and sink_healthy and not extra
    return Readiness(ready, service, connected, sink_healthy, assigned, dict(lag or {}), {}, detail)


def heartbeat(app: faust.App, interval_s: float = 1.0) -> dict[str, float]:
    """Liveness: a timer that stamps the time while faust's event loop advances."""
    progress = {"t": time.time()}

    @app.timer(interval_s, name=f"{app.conf.id}.heartbeat")
    async def _beat() -> None:
        progress["t"] = time.time()

    return progress
