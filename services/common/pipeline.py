"""The consumer pipeline every Argus consumer is built from:

    decode/validate -> transform (pure) -> batch -> sink -> commit offsets

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
  bounded by one batch.
- Offsets are committed only after the sink returned (and after the dead letters of
  the batch were acknowledged by the broker): at-least-once delivery. Sinks make
  their writes idempotent to turn that into exactly-once rows.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from services.common.codec import AvroCodec, SerializationError
from services.common.dlq import DeadLetterPolicy, Message, producer_sender
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import SchemaRegistry, default_registry
from services.common.settings import KafkaSettings, PipelineSettings

if TYPE_CHECKING:
    from services.common.health import Readiness

T = TypeVar("T")


class InvalidMessage(Exception):
    """This message can never be processed: dead-letter it, do not retry."""

    def __init__(self, reason: str, error_type: str = "InvalidMessage") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


class TransientError(Exception):
    """A failure worth retrying (store down, timeout): the batch is retried with backoff."""


@dataclass
class Batch(Generic[T]):
    items: list[T] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    messages: int = 0
    dead_letters: list[asyncio.Future] = field(default_factory=list)  # broker acks of this batch's dead letters


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
        # ``fast_path(record)`` may turn a raw Kafka record straight into a sink item (it
        # must accept only what decode + transform would accept and produce the same
        # item); ``None`` sends the record through decode + transform as usual
        self.fast_path = fast_path
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._batch: Batch[T] = Batch()
        self._in_flight: asyncio.Task | None = None  # the previous batch: sink + commit
        self.last_progress = time.time()
        self.sink_healthy = True
        self.committed: dict[TopicPartition, int] = {}
        self._position: dict[TopicPartition, int] = {}  # next offset expected per assigned partition
        self._ready: set[TopicPartition] = set()  # assigned partitions whose resume point is decided

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        from services.common.kafka import make_consumer, make_producer

        self.producer = make_producer(self.kafka)
        await self.producer.start()
        self.consumer = make_consumer(self.kafka, self.group_id, **self._consumer_overrides)
        self.consumer.subscribe([self.topic], listener=_FlushOnRevoke(self))
        await self.consumer.start()
        self._send_dead_letter = producer_sender(self.producer)
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

    # -- one poll ------------------------------------------------------------
    async def step(self, timeout_ms: int = 200) -> None:
        assert self.consumer is not None
        records = await self.consumer.getmany(
            timeout_ms=timeout_ms, max_records=max(1, self.policy.batch_max_messages - self._batch.messages)
        )
        self.last_progress = time.time()
        self.metrics.set("argus_last_poll_timestamp_seconds", self.last_progress)
        for tp, msgs in records.items():
            self._process(tp, msgs)
            self.metrics.inc("argus_messages_consumed_total", len(msgs), topic=tp.topic)
        if self._batch.messages and (
            self._batch.messages >= self.policy.batch_max_messages
            or time.monotonic() - self._batch.started >= self.policy.batch_max_seconds
        ):
            await self._flush()

    def _process(self, tp: TopicPartition, msgs: list[Any]) -> None:
        """Add one partition's records (in offset order) to the batch: through the fast
        path where it takes them, else decoded and transformed; invalid ones are
        dead-lettered (their offsets still advance: the dead letter is the record)."""
        if not msgs:
            return
        if self.resume_offsets is not None and tp not in self._ready:
            # fetched from the group's committed offset before the assignment listener
            # decided where this partition resumes (aiokafka fetches while the listener
            # awaits the sink): the listener seeks explicitly, so these come again from there
            return
        expected = self._position.get(tp)
        if (expected is not None and msgs[0].offset < expected) or msgs[-1].offset - msgs[0].offset + 1 != len(msgs):
            # not one contiguous run after what was delivered: gaps (compaction, transaction
            # markers) are fine; a record delivered again within this assignment would be a
            # duplicate row, so offsets are kept strictly increasing (defensive: the client
            # should never do it, and a warning says if it did)
            kept, nxt = [], -1 if expected is None else expected
            for r in msgs:
                if r.offset >= nxt:
                    kept.append(r)
                    nxt = r.offset + 1
            if len(kept) != len(msgs):
                self.log.warning(
                    "pipeline.redelivered_skipped",
                    partition=tp.partition,
                    first=msgs[0].offset,
                    expected=expected,
                    skipped=len(msgs) - len(kept),
                )
            msgs = kept
            if not msgs:
                return
        self._position[tp] = msgs[-1].offset + 1
        batch = self._batch
        append = batch.items.append
        fast = self.fast_path
        valid = 0  # valid outcomes not yet recorded in the dead-letter ratio
        for rec in msgs:
            if fast is not None:
                item = fast(rec)
                if item is not None:
                    append(item)
                    valid += 1
                    continue
            msg = Message(
                topic=rec.topic,
                partition=rec.partition,
                offset=rec.offset,
                key=rec.key,
                raw=rec.value,
                timestamp_ms=rec.timestamp,
                headers=tuple(rec.headers or ()),
            )
            try:
                try:
                    msg.value = self._decode(msg.raw)
                except SerializationError as exc:
                    raise InvalidMessage(str(exc), "InvalidMessage.SerializationError") from exc
                item = self.transform(msg)
            except InvalidMessage as exc:
                self.dlq.record_valid(tp.topic, tp.partition, valid)  # keep the ratio's window in offset order
                valid = 0
                self._dead_letter(msg, exc.reason, exc.error_type)
                continue
            valid += 1
            if item is not None:
                append(item)
        self.dlq.record_valid(tp.topic, tp.partition, valid)
        batch.offsets[tp] = msgs[-1].offset + 1
        batch.messages += len(msgs)

    def _dead_letter(self, msg: Message, reason: str, error_type: str) -> None:
        """Hand an invalid message to the dead-letter policy; the batch's commit waits
        for the broker's acknowledgement of it."""
        self._batch.dead_letters.append(self.dlq.send(self._send_dead_letter, msg, reason, error_type))

    async def _flush(self) -> None:
        """Hand the batch to the sink and go on consuming: at most one batch is being
        written while the next one fills (memory stays bounded by two batches). Its
        offsets are committed once its write returned."""
        assert self.consumer is not None
        batch, self._batch = self._batch, Batch()
        await self._wait_in_flight()
        self._in_flight = asyncio.create_task(self._complete(batch))

    async def _wait_in_flight(self) -> None:
        task = self._in_flight
        if task is None:
            return
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if not task.done() and not self.sink_healthy and self.consumer is not None:
                # the sink is retrying with the partitions paused: keep polling so this member
                # stays in its group (max.poll.interval); paused partitions return nothing, and
                # anything from a newly assigned partition joins the next batch
                for tp, msgs in (await self.consumer.getmany(timeout_ms=0)).items():
                    self._process(tp, msgs)
                self.last_progress = time.time()
        self._in_flight = None
        await task  # re-raises a non-transient sink failure: nothing more is committed

    async def drain(self) -> None:
        """Write and commit everything read so far (before a stop or a rebalance)."""
        if self._batch.messages:
            await self._flush()
        await self._wait_in_flight()

    async def _complete(self, batch: Batch[T]) -> None:
        assert self.consumer is not None
        if batch.items:
            await self._sink_with_retry(batch)
        if batch.dead_letters:
            await asyncio.gather(*batch.dead_letters)  # retried until acknowledged: committed only after
        assignment = self.consumer.assignment()
        offsets = {tp: off for tp, off in batch.offsets.items() if tp in assignment}
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except CommitFailedError:
                # partitions moved to another member mid-batch; it re-reads from the last
                # commit and the idempotent sink absorbs the overlap
                self.log.warning("pipeline.commit_failed_rebalance", offsets={str(k): v for k, v in offsets.items()})
                return
            self.committed.update(offsets)
            self.metrics.inc("argus_commits_total")
        self.metrics.observe("argus_batch_size", batch.messages, topic=self.topic)

    async def _sink_with_retry(self, batch: Batch[T]) -> None:
        assert self.consumer is not None
        backoff = self.policy.retry_initial_backoff_s
        paused: set[TopicPartition] = set()
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                await self.sink(batch.items)
            except (TransientError, OSError, asyncio.TimeoutError) as exc:
                self.metrics.inc("argus_sink_retries_total", sink=self.topic)
                self.log.warning("pipeline.sink_retry", attempt=attempt, backoff_s=backoff, error=repr(exc))
                if not paused:
                    # no more fetching until the store is back: memory stays bounded
                    paused = set(self.consumer.assignment())
                    self.consumer.pause(*paused)
                self.sink_healthy = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.policy.retry_max_backoff_s)
                continue
            self.sink_healthy = True
            self.metrics.observe("argus_sink_seconds", time.perf_counter() - started, sink=self.topic)
            if paused:
                self.consumer.resume(*(paused & set(self.consumer.assignment())))
            return

    # -- readiness -----------------------------------------------------------
    async def lag(self) -> dict[str, int]:
        """Per-partition lag of this member (see :func:`services.common.kafka.assigned_lag`)."""
        from services.common.kafka import assigned_lag

        if self.consumer is None:
            return {}
        return await assigned_lag(self.consumer, self.committed, self.metrics)


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


class _FlushOnRevoke(ConsumerRebalanceListener):
    """Before partitions leave this member, sink and commit what was read from them."""

    def __init__(self, pipeline: Pipeline[Any]) -> None:
        self.pipeline = pipeline

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.pipeline._position.pop(tp, None)
            self.pipeline._ready.discard(tp)
        try:
            await self.pipeline.drain()
        except KafkaError as exc:
            self.pipeline.log.warning("pipeline.flush_on_revoke_failed", error=repr(exc))
            self.pipeline._batch = Batch()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        p = self.pipeline
        p.log.info("pipeline.assigned", partitions=sorted(str(tp) for tp in assigned))
        for tp in assigned:
            p._position.pop(tp, None)
            p._ready.discard(tp)
        if p.resume_offsets is None or not assigned or p.consumer is None:
            return
        # The sink knows what it already stored: resume after it when it is ahead of the
        # committed offset (a crash between the write and the commit), so no row is
        # written twice. Every partition is positioned explicitly: records fetched
        # before this decision were dropped by the pipeline and come again from here.
        stored = await p.resume_offsets(list(assigned))
        unknown = []
        for tp in assigned:
            committed = await p.consumer.committed(tp)
            offset = stored.get(tp)
            if committed is not None and (offset is None or committed >= offset):
                offset = committed
            elif offset is not None:
                p.log.info("pipeline.resume_from_sink", partition=tp.partition, committed=committed, offset=offset)
            if offset is None:
                unknown.append(tp)
                continue
            p.consumer.seek(tp, offset)
            p._position[tp] = offset
        if unknown:  # nothing committed, nothing stored: where the group's reset policy starts
            latest = p._consumer_overrides.get("auto_offset_reset", "earliest") == "latest"
            starts = await p.consumer.end_offsets(unknown) if latest else await p.consumer.beginning_offsets(unknown)
            for tp, offset in starts.items():
                p.consumer.seek(tp, offset)
                p._position[tp] = offset
        p._ready.update(assigned)
