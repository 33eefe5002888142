"""The batching consumer of the runtime (:mod:`services.common.runtime`), as ingest
runs it for every topic:

    DecodeStep (decode, pure transform; invalid -> DeadLetterPolicy)
      -> BatchStep (size or age) -> SinkStep (retry, pause) -> CommitStep

- ``decode`` turns bytes into a record with the topic's codec; a
  :class:`~services.common.codec.SerializationError` becomes an :class:`InvalidMessage`.
- ``transform`` is a pure function of one message; it raises :class:`InvalidMessage`
  for input it cannot accept and returns ``None`` to skip a message on purpose.
- Invalid messages go to the topic's dead-letter topic through the consumer's
  :class:`~services.common.dlq.DeadLetterPolicy` (one record and header format, retried
  delivery, a storm guard that raises the alarm but never stops valid traffic).
- Batches are flushed by size or age. The sink is retried with capped exponential
  backoff while it raises :class:`TransientError` (or ``OSError``); meanwhile the
  consumer is paused but keeps polling, so it stays in its group and memory stays
  bounded by two batches (one being written, one filling).
- Offsets are committed only after the sink returned (and after the dead letters of
  the batch were acknowledged by the broker): at-least-once delivery. Sinks make
  their writes idempotent to turn that into exactly-once rows; a sink that knows what
  it stored (``resume_offsets``) is resumed after it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.common.codec import AvroCodec
from services.common.dlq import DeadLetterPolicy, Message, producer_sender
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import SchemaRegistry, default_registry
from services.common.runtime import BatchStep, CommitStep, DecodeStep, SinkStep, StreamProcessor
from services.common.runtime.decode import InvalidMessage
from services.common.runtime.records import Batch
from services.common.runtime.sink import TransientError
from services.common.settings import KafkaSettings, PipelineSettings

if TYPE_CHECKING:
    from services.common.health import Readiness

__all__ = ["Batch", "InvalidMessage", "Message", "Pipeline", "TransientError", "pipeline_readiness"]

T = TypeVar("T")


class Pipeline(Generic[T]):
    """Runs one consumer group over one registry topic.

    Example::

        pipeline = Pipeline(kafka=settings.kafka, policy=settings.pipeline, topic_key="feedback",
                            group_id="argus-ingest", service="ingest",
                            transform=feedback_row, sink=insert_rows, metrics=metrics)
        await pipeline.run(stop)
    """

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        policy: PipelineSettings,
        topic_key: str,
        group_id: str,
        service: str,
        transform: Callable[[Message], T | None],
        sink: Callable[[list[T]], Awaitable[None]],
        metrics: Metrics | None = None,
        registry: SchemaRegistry | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        resume_offsets: Callable[[list[TopicPartition]], Awaitable[dict[TopicPartition, int]]] | None = None,
        logical_types: bool = True,
        fast_path: Callable[[Any], T | None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.policy = policy
        self.registry = registry or default_registry()
        self.spec = self.registry.topic(topic_key)
        self.topic = kafka.topic_prefix + self.spec.name
        self.codec: AvroCodec = self.registry.codec(topic_key)
        self.group_id = group_id
        self.service = service
        self.transform = transform
        self.sink = sink
        self.metrics = metrics or Metrics(service)
        self.log = get_logger(f"argus.{service}.pipeline", topic=self.topic, group=group_id)
        self.dlq = DeadLetterPolicy(
            kafka=kafka, service=service, group=group_id, settings=policy, metrics=self.metrics, registry=self.registry
        )
        self._consumer_overrides = consumer_overrides or {}
        self.resume_offsets = resume_offsets
        self._decode = self.codec.decode if logical_types else self.codec.decode_plain
        self.fast_path = fast_path
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.processor: StreamProcessor | None = None
        self._sink_step: SinkStep[T] | None = None
        self._commit_step: CommitStep[T] | None = None
        self._batch_step: BatchStep[T] | None = None

    # -- what readiness and tests read ---------------------------------------
    @property
    def last_progress(self) -> float:
        import time

        return self.processor.last_progress if self.processor is not None else time.time()

    @property
    def sink_healthy(self) -> bool:
        return self._sink_step.healthy if self._sink_step is not None else True

    @property
    def committed(self) -> dict[TopicPartition, int]:
        return self._commit_step.committed if self._commit_step is not None else {}

    # -- lifecycle -----------------------------------------------------------
    def _build(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> StreamProcessor:
        """The chain of steps this consumer is: decode -> batch -> sink -> commit."""
        send_dead_letter = producer_sender(producer)
        commit = CommitStep[T](consumer, self.metrics, self.log, self.topic)
        sink = SinkStep[T](
            self.sink,
            commit,
            initial_backoff_s=self.policy.retry_initial_backoff_s,
            max_backoff_s=self.policy.retry_max_backoff_s,
            pause=self._pause,
            resume=self._resume,
            metrics=self.metrics,
            log=self.log,
            name=self.topic,
        )
        batch = BatchStep[T](self.policy.batch_max_messages, self.policy.batch_max_seconds, sink)
        decode = DecodeStep[T](
            self._decode, self.transform, self.dlq, lambda: send_dead_letter, batch, fast_path=self.fast_path
        )
        processor = StreamProcessor(
            consumer,
            [self.topic],
            decode,
            room=lambda: batch.room,
            on_revoke=self._on_revoke,
            resume_offsets=self.resume_offsets,
            auto_offset_reset=self._consumer_overrides.get("auto_offset_reset", "earliest"),
            metrics=self.metrics,
            log=self.log,
        )
        sink.keep_polling = processor.keep_polling
        self._commit_step, self._sink_step, self._batch_step = commit, sink, batch
        return processor

    def _pause(self) -> set[TopicPartition]:
        assert self.consumer is not None
        paused = set(self.consumer.assignment())
        self.consumer.pause(*paused)
        return paused

    def _resume(self, paused: set[TopicPartition]) -> None:
        assert self.consumer is not None
        self.consumer.resume(*(paused & set(self.consumer.assignment())))

    async def _on_revoke(self, revoked: list[TopicPartition]) -> None:
        """Before partitions leave this member, sink and commit what was read from them."""
        try:
            await self.drain()
        except KafkaError as exc:
            self.log.warning("pipeline.flush_on_revoke_failed", error=repr(exc))
            if self._batch_step is not None:
                self._batch_step.discard()

    async def start(self) -> None:
        from services.common.kafka import make_consumer, make_producer

        self.producer = make_producer(self.kafka)
        await self.producer.start()
        self.consumer = make_consumer(self.kafka, self.group_id, **self._consumer_overrides)
        self.processor = self._build(self.consumer, self.producer)
        self.processor.subscribe()
        await self.consumer.start()
        self.log.info("pipeline.started", dlq_topic=self.spec.dead_letter_topic)

    async def stop(self) -> None:
        try:
            if self.consumer is not None:
                await self.drain()
        finally:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()
            self.log.info("pipeline.stopped")

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set (then flush, commit and leave the group)."""
        await self.start()
        try:
            while not stop.is_set():
                await self.step(timeout_ms=200)
        finally:
            await self.stop()

    async def step(self, timeout_ms: int = 200) -> None:
        assert self.processor is not None
        await self.processor.step(timeout_ms)

    async def drain(self) -> None:
        """Write and commit everything read so far (before a stop or a rebalance)."""
        if self._batch_step is not None:
            await self._batch_step.join()

    # -- readiness -----------------------------------------------------------
    async def lag(self) -> dict[str, int]:
        """Per-partition lag of this member (see :func:`services.common.kafka.assigned_lag`)."""
        from services.common.kafka import assigned_lag

        if self.consumer is None:
            return {}
        return await assigned_lag(self.consumer, self._commit_step.committed if self._commit_step else {}, self.metrics)


async def pipeline_readiness(pipeline: "Pipeline[Any]") -> "Readiness":
    """Readiness of a pipeline: connected to the broker with partitions assigned (or
    legitimately none, when a group has more members than partitions), lag known, and
    the sink accepting writes."""
    from services.common.health import Readiness

    consumer = pipeline.consumer
    if consumer is None:
        return Readiness(False, pipeline.service, False, pipeline.sink_healthy, detail="not started")
    try:
        lag = await pipeline.lag()
        connected = True
        detail = ""
    except KafkaError as exc:
        lag, connected, detail = {}, False, f"broker: {exc!r}"
    assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in consumer.assignment())
    committed = {f"{tp.topic}[{tp.partition}]": off for tp, off in pipeline.committed.items()}
    ready = connected and pipeline.sink_healthy
    if not pipeline.sink_healthy:
        detail = "sink failing; retrying with backoff"
    return Readiness(ready, pipeline.service, connected, pipeline.sink_healthy, assigned, lag, committed, detail)
