"""Dead letters: one policy object every consumer hands its invalid messages to.

Every Argus consumer (the ingest pipelines, the inference bridge, retraining, and the
faust apps drift and alerting) dead-letters through :class:`DeadLetterPolicy`, so there
is one record and header format, one writer, and one ratio guard:

- **Where**: the dead-letter topic of a message's topic comes from the topic registry
  (``dead_letter_topic`` in ``schemas/topics/<key>.yaml``), never from a list in code.
- **What**: a ``DeadLetter`` record (the original key and value, coordinates, reason,
  error type, group, service) plus the same facts as ``argus.*`` headers. An original
  value larger than ``max_original_bytes`` is cut to that size; the header
  ``argus.original_size`` and the reason say so, so a near-1 MB invalid message can
  never make the dead-letter write itself fail.
- **Delivery**: a failed dead-letter write (broker unavailable, timeout) is retried
  with capped exponential backoff until it is acknowledged; the caller commits the
  message's offset only after that. Nothing is dropped and the consumer never exits.
- **Storms**: a sliding window per partition tracks the share of invalid messages.
  When it exceeds the limit the partition is *in a storm*: this is logged once, the
  gauge ``argus_dead_letter_storm{topic,partition}`` is 1 and
  ``argus_dead_letter_storms_total`` counts it, and the alerting service's
  ``DeadLetterStorm`` rule fires from the dead-letter topic. Dead-lettering goes on:
  stopping (the old behaviour) or pausing the partition would hold back every valid
  message that shares it, from every other producer, to punish one; and nothing of a
  storm is lost, because ``argus dlq replay`` re-publishes dead letters after a fix.

Example::

    policy = DeadLetterPolicy(kafka=settings.kafka, service="ingest", group="argus-ingest",
                              settings=settings.pipeline, metrics=metrics)
    ack = policy.send(producer_sender(producer), message, "unknown schema id 99",
                      "InvalidMessage.SerializationError")
    ...
    await ack  # before committing the message's offset
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice, repeat
from typing import Any, Awaitable, Callable

from aiokafka.errors import KafkaError

from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import RegistryError, SchemaRegistry, default_registry
from services.common.settings import KafkaSettings, PipelineSettings

REASON_MAX_CHARS = 4000
HEADER_REASON_MAX_CHARS = 1000

# send(topic, value, key, headers) -> once the broker acknowledged the record
Sender = Callable[[str, bytes, "bytes | None", list[tuple[str, bytes]]], Awaitable[Any]]


@dataclass
class Message:
    """One Kafka record as a consumer saw it (``value`` is the decoded record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()
    value: Any = None


class DeadLetterRatio:
    """Sliding window over the last ``window`` outcomes; ``exceeded`` once at least
    ``min_messages`` were seen and the share of dead letters is above ``limit``."""

    def __init__(self, limit: float, window: int, min_messages: int) -> None:
        self.limit = limit
        self.min_messages = min_messages
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._bad = 0

    def record_valid(self, n: int) -> None:
        """Record ``n`` valid outcomes at once."""
        if n <= 0:
            return
        evicted = len(self._outcomes) + n - (self._outcomes.maxlen or 0)
        if evicted > 0:
            self._bad -= sum(islice(self._outcomes, min(evicted, len(self._outcomes))))
        self._outcomes.extend(repeat(False, n))

    def record(self, invalid: bool) -> None:
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self._bad -= 1
        self._outcomes.append(invalid)
        self._bad += invalid

    @property
    def ratio(self) -> float:
        return self._bad / len(self._outcomes) if self._outcomes else 0.0

    def exceeded(self) -> bool:
        return len(self._outcomes) >= self.min_messages and self.ratio > self.limit


def dead_letter_record(
    msg: Message, reason: str, error_type: str, group: str, service: str, max_original_bytes: int | None = None
) -> dict[str, Any]:
    """The ``DeadLetter`` record of ``msg`` (the original value cut to
    ``max_original_bytes``, the reason then says from what size)."""
    value = msg.raw
    if max_original_bytes is not None and value is not None and len(value) > max_original_bytes:
        reason = f"{reason} [original value truncated from {len(value)} to {max_original_bytes} bytes]"
        value = value[:max_original_bytes]
    return {
        "original_topic": msg.topic,
        "original_partition": msg.partition,
        "original_offset": msg.offset,
        "original_key": msg.key,
        "original_value": value,
        "original_timestamp": msg.timestamp_ms if msg.timestamp_ms and msg.timestamp_ms > 0 else None,
        "reason": reason[:REASON_MAX_CHARS],
        "error_type": error_type,
        "consumer_group": group,
        "service": service,
        "failed_at": int(time.time() * 1000),
    }


def dead_letter_headers(msg: Message, reason: str, error_type: str) -> list[tuple[str, bytes]]:
    headers = [
        ("argus.original_topic", msg.topic.encode()),
        ("argus.original_partition", str(msg.partition).encode()),
        ("argus.original_offset", str(msg.offset).encode()),
        ("argus.reason", reason[:HEADER_REASON_MAX_CHARS].encode()),
        ("argus.error_type", error_type.encode()),
    ]
    if msg.raw is not None:
        headers.append(("argus.original_size", str(len(msg.raw)).encode()))
    return headers


def producer_sender(producer: Any) -> Sender:
    """A :data:`Sender` over an aiokafka producer."""

    async def send(topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        return await producer.send_and_wait(topic, value, key=key, headers=headers)

    return send


class DeadLetterPolicy:
    """Where, how and how often one consumer (one service, one group) dead-letters."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        service: str,
        group: str,
        settings: PipelineSettings | None = None,
        metrics: Metrics | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.kafka = kafka
        self.service = service
        self.group = group
        self.settings = settings or PipelineSettings()
        self.metrics = metrics or Metrics(service)
        self.registry = registry or default_registry()
        self.log = get_logger(f"argus.{service}.dlq", group=group)
        self._ratios: dict[tuple[str, int], DeadLetterRatio] = {}
        self._storms: set[tuple[str, int]] = set()
        self._targets: dict[str, tuple[str, Any]] = {}

    # -- where -------------------------------------------------------------------
    def target(self, topic: str) -> tuple[str, Any]:
        """The dead-letter topic name and codec for a consumed topic (its Kafka name)."""
        if topic not in self._targets:
            name = topic.removeprefix(self.kafka.topic_prefix)
            try:  # a tenant's copy of a topic dead-letters where the topic does
                key, _ = self.registry.key_of(name)
            except RegistryError:
                raise RegistryError(f"{topic} is not a registry topic: it has no dead-letter topic") from None
            dlq_key = self.registry.topic(key).dead_letter_topic
            if dlq_key is None:
                raise RegistryError(f"{topic} has no dead-letter topic in the registry")
            self._targets[topic] = (
                self.kafka.topic_prefix + self.registry.topic(dlq_key).name,
                self.registry.codec(dlq_key),
            )
        return self._targets[topic]

    # -- how ---------------------------------------------------------------------
    def encode(self, msg: Message, reason: str, error_type: str) -> tuple[str, bytes, list[tuple[str, bytes]]]:
        topic, codec = self.target(msg.topic)
        record = dead_letter_record(
            msg, reason, error_type, self.group, self.service, self.settings.dlq_max_original_bytes
        )
        return topic, codec.encode(record), dead_letter_headers(msg, record["reason"], error_type)

    def send(self, sender: Sender, msg: Message, reason: str, error_type: str) -> asyncio.Future:
        """Dead-letter ``msg``: returns a future done once the broker acknowledged the
        dead letter (retried with backoff meanwhile). Also feeds the storm guard."""
        self.record_invalid(msg.topic, msg.partition)
        try:
            topic, value, headers = self.encode(msg, reason, error_type)
        except RegistryError as exc:
            # a dead-letter topic's own invalid records have nowhere further to go: they
            # stay where they are (the dead-letter topic keeps them for its retention)
            self.metrics.inc("argus_messages_dead_lettered_total", topic=msg.topic, error_type="Unroutable")
            self.log.error(
                "dead_letter_unroutable",
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                reason=reason[:HEADER_REASON_MAX_CHARS],
                error=str(exc),
            )
            done: asyncio.Future = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        self.metrics.inc("argus_messages_dead_lettered_total", topic=msg.topic, error_type=error_type)
        self.log.warning(
            "dead_lettered",
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            reason=reason[:HEADER_REASON_MAX_CHARS],
            error_type=error_type,
            dlq_topic=topic,
        )
        return asyncio.ensure_future(self._deliver(sender, topic, value, msg.key, headers, msg))

    async def _deliver(
        self,
        sender: Sender,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        msg: Message,
    ) -> None:
        backoff = self.settings.retry_initial_backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                await sender(topic, value, key, headers)
                return
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                self.log.warning(
                    "dead_letter_retry",
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    attempt=attempt,
                    backoff_s=backoff,
                    error=type(exc).__name__,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_max_backoff_s)

    # -- how often ---------------------------------------------------------------
    def _ratio(self, topic: str, partition: int) -> DeadLetterRatio:
        key = (topic, partition)
        r = self._ratios.get(key)
        if r is None:
            s = self.settings
            r = self._ratios[key] = DeadLetterRatio(s.dlq_ratio_limit, s.dlq_ratio_window, s.dlq_ratio_min_messages)
        return r

    def record_valid(self, topic: str, partition: int, n: int = 1) -> None:
        if n <= 0:
            return
        r = self._ratio(topic, partition)
        r.record_valid(n)
        if (topic, partition) in self._storms and r.ratio <= r.limit / 2:
            self._storms.discard((topic, partition))
            self.metrics.set("argus_dead_letter_storm", 0, topic=topic, partition=str(partition))
            self.log.info("dead_letter_storm_over", topic=topic, partition=partition, ratio=round(r.ratio, 3))

    def record_invalid(self, topic: str, partition: int) -> None:
        r = self._ratio(topic, partition)
        r.record(True)
        if r.exceeded() and (topic, partition) not in self._storms:
            self._storms.add((topic, partition))
            self.metrics.set("argus_dead_letter_storm", 1, topic=topic, partition=str(partition))
            self.metrics.inc("argus_dead_letter_storms_total", topic=topic)
            self.log.error(
                "dead_letter_storm",
                topic=topic,
                partition=partition,
                ratio=round(r.ratio, 3),
                limit=r.limit,
                action="dead-lettering goes on; valid messages keep flowing",
            )

    def in_storm(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self._storms

    @property
    def storms(self) -> list[str]:
        return sorted(f"{t}[{p}]" for t, p in self._storms)
