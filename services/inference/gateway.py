"""The tenant gateway: every tenant's request topic -> the shared requests topic.

Tenants publish to their own topic (``argus.tenant.<name>.requests``), which only their
principal may write (:mod:`services.common.tenants`). The gateway subscribes to all of
them by pattern (a new tenant is picked up within ``gateway.discovery_interval_s``, from
the start of its topic), and for each request:

- takes the tenant from the topic name; a payload that names another tenant is
  dead-lettered with the reason (refuse, never guess), an empty one is filled in;
- forwards the request, re-encoded with the tenant set, to ``argus.inference.requests``
  (keyed by request_id) with the header ``argus.reply_tenant``, so the bridge also copies
  the answer to that tenant's reply topic; ingest, drift and alerting see it like any
  other request;
- commits the tenant topic's offset only after the broker acknowledged the forward.

Built from the runtime's steps (``DecodeStep`` -> ``ConcurrentStep``) like the bridge.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import TopicPartition

from services.common.dlq import DeadLetterPolicy, Message, producer_sender
from services.common.health import Readiness
from services.common.kafka import assigned_lag, make_consumer, make_producer
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import RegistryError, SchemaRegistry, default_registry
from services.common.runtime import ConcurrentStep, DecodeStep, StreamProcessor
from services.common.runtime.decode import InvalidMessage
from services.common.runtime.service import ConsumerService
from services.common.tenants import REPLY_HEADER, request_pattern
from services.inference.settings import InferenceSettings


class TenantGateway(ConsumerService):
    def __init__(
        self, settings: InferenceSettings, metrics: Metrics | None = None, registry: SchemaRegistry | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry or default_registry()
        k = settings.kafka
        self.pattern = request_pattern(k.topic_prefix)
        self.requests_topic = k.topic("inference-requests")
        self.codec = self.registry.codec("inference-requests")
        self.metrics = metrics or Metrics("inference-gateway")
        g = settings.gateway
        self.dlq = DeadLetterPolicy(
            kafka=k,
            service="inference-gateway",
            group=g.group_id,
            settings=settings.pipeline,
            metrics=self.metrics,
            registry=self.registry,
        )
        self.log = get_logger("argus.inference.gateway", pattern=self.pattern)
        self.consumer: Any = None
        self.producer: Any = None
        self.processor: StreamProcessor | None = None
        self.forwarding: ConcurrentStep[tuple[str, dict[str, Any]]] | None = None
        self.forwarded = 0

    @property
    def last_progress(self) -> float:
        return self.processor.last_progress if self.processor is not None else time.time()

    def tenant(self, msg: Message) -> tuple[str, dict[str, Any]]:
        """The gateway's transform: (tenant from the topic name, request stamped with it)."""
        try:
            _, tenant = self.registry.key_of(msg.topic.removeprefix(self.settings.kafka.topic_prefix))
        except RegistryError:
            tenant = None
        if tenant is None:  # the pattern only matches tenant topics; never forward anything else
            raise InvalidMessage(f"{msg.topic} is not a tenant request topic", "InvalidMessage.NotATenantTopic")
        claimed = msg.value.get("tenant") or ""
        if claimed not in ("", tenant):
            raise InvalidMessage(
                f"request names tenant {claimed[:64]!r} but was published on tenant {tenant!r}'s topic",
                "InvalidMessage.TenantMismatch",
            )
        return tenant, {**msg.value, "tenant": tenant}

    def _build(self) -> StreamProcessor:
        g = self.settings.gateway
        send_dead_letter = producer_sender(self.producer)
        self.forwarding = ConcurrentStep(
            self._forward, g.max_in_flight, self.consumer, g.commit_interval_s, self.metrics
        )
        decode = DecodeStep(
            self.codec.decode, self.tenant, self.dlq, lambda: send_dead_letter, self.forwarding, track_offsets=True
        )
        forwarding = self.forwarding
        return StreamProcessor(
            self.consumer,
            [],
            decode,
            room=lambda: forwarding.room,
            on_revoke=forwarding.revoke,
            metrics=self.metrics,
            log=self.log,
            pattern=self.pattern,
        )

    async def _forward(self, tp: TopicPartition, offset: int, item: tuple[str, dict[str, Any]]) -> None:
        tenant, request = item
        assert self.producer is not None
        await self.producer.send_and_wait(
            self.requests_topic,
            self.codec.encode(request),
            key=str(request["request_id"]).encode(),
            headers=[(REPLY_HEADER, tenant.encode())],
        )
        self.metrics.inc("argus_messages_produced_total", topic=self.requests_topic)
        self.forwarded += 1

    async def start(self) -> None:
        g, k = self.settings.gateway, self.settings.kafka
        self.producer = make_producer(k, linger_ms=0)
        await self.producer.start()
        self.consumer = make_consumer(
            k,
            g.group_id,
            max_poll_records=g.max_in_flight,
            # how soon a new tenant's topic joins the subscription
            metadata_max_age_ms=int(g.discovery_interval_s * 1000),
        )
        self.processor = self._build()
        self.processor.subscribe()
        await self.consumer.start()
        self.log.info("gateway.started", group=g.group_id)

    def last_step(self) -> ConcurrentStep | None:
        return self.forwarding

    async def readiness(self) -> Readiness:
        if self.consumer is None or self.forwarding is None:
            return Readiness(False, "inference-gateway", False, True, detail="not started")
        parts = sorted(self.consumer.assignment(), key=lambda t: (t.topic, t.partition))
        lag = await assigned_lag(self.consumer, self.forwarding.committed, self.metrics)
        failure = self.forwarding.failure
        return Readiness(
            failure is None,
            "inference-gateway",
            True,
            True,
            [f"{tp.topic}[{tp.partition}]" for tp in parts],
            lag,
            {f"{tp.topic}[{tp.partition}]": o for tp, o in self.forwarding.tracker.committable().items()},
            detail=repr(failure) if failure else "",
        )
