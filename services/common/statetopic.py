"""Reading a state topic from its beginning: the step services use to rebuild what a
topic says (the retraining book from the triggers and the registry, the serving state
the inference service applies) and then follow it.

No consumer group: every instance reads every record, in offset order per partition.
It is the runtime's ``DecodeStep -> RunTaskStep`` without commits: each record is
decoded with its topic's codec; an undecodable one goes to the topic's dead-letter topic
through the service's :class:`~services.common.dlq.DeadLetterPolicy`, the rest are
handed to ``handler(topic_key, record)`` in offset order; ``check(topic_key, record)``,
when given, may refuse a decoded record the same way (e.g. an unsigned approval). ``on_caught_up`` runs once, when every partition has
reached the end offsets seen at start.

Example::

    reader = StateTopicReader(kafka, ["retraining-triggers", "model-registry"], on_record,
                              dlq=policy, producer=producer, on_caught_up=resume_open_triggers)
    await reader.run(stop)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from aiokafka import TopicPartition

from services.common.codec import SerializationError
from services.common.dlq import DeadLetterPolicy, Message, producer_sender
from services.common.kafka import make_consumer
from services.common.registry import default_registry
from services.common.runtime import DecodeStep, Records, RunTaskStep
from services.common.runtime.decode import InvalidMessage
from services.common.settings import KafkaSettings

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


class StateTopicReader:
    def __init__(
        self,
        kafka: KafkaSettings,
        keys: list[str],
        handler: Handler,
        *,
        dlq: DeadLetterPolicy,
        producer: Any,
        on_caught_up: Callable[[], Awaitable[None]] | None = None,
        metrics: Any = None,
        check: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        reg = default_registry()
        self.kafka = kafka
        self.keys = {kafka.topic(key): key for key in keys}
        self.partitions = {key: reg.topic(key).partitions for key in keys}
        self.codecs = {key: reg.codec(key) for key in keys}
        self.handler = handler
        self.dlq = dlq
        self.send_dead_letter = producer_sender(producer)
        self.on_caught_up = on_caught_up
        self.metrics = metrics
        self.check = check  # raises InvalidMessage for a record to refuse (dead-lettered with the reason)
        self.caught_up = asyncio.Event()
        self.last_progress = time.time()

    def _decode(self, msg: Message) -> tuple[str, dict[str, Any]]:
        key = self.keys[msg.topic]
        try:
            rec = self.codecs[key].decode_plain(msg.raw)
        except SerializationError as exc:
            raise InvalidMessage(str(exc), "InvalidMessage.SerializationError") from exc
        if self.check is not None:
            self.check(key, rec)
        return key, rec

    async def _handle(self, item: tuple[str, dict[str, Any]]) -> None:
        await self.handler(*item)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(self.kafka, None)
        steps = DecodeStep(
            lambda raw: raw,
            self._decode,
            self.dlq,
            lambda: self.send_dead_letter,
            RunTaskStep(self._handle, consumer, commit=False),
        )
        await consumer.start()
        try:
            tps = [TopicPartition(name, p) for name, key in self.keys.items() for p in range(self.partitions[key])]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    if self.metrics is not None:
                        self.metrics.inc("argus_messages_consumed_total", len(records), topic=tp.topic)
                    await steps.submit(Records(tp, records))
                if not self.caught_up.is_set():
                    positions = {tp: await consumer.position(tp) for tp in tps}
                    if all(positions[tp] >= ends[tp] for tp in tps):
                        self.caught_up.set()
                        if self.on_caught_up is not None:
                            await self.on_caught_up()
                self.last_progress = time.time()
        finally:
            await consumer.stop()


async def read_topic(kafka: KafkaSettings, key: str, skip_undecodable: bool = False) -> list[dict[str, Any]]:
    """Every record of a one-partition registry topic up to its end now, decoded with its
    contract (plain values): what the CLI, the tests and a restarting writer read whole.
    An undecodable record raises :class:`SerializationError`, or is left out."""
    codec = default_registry().codec(key)
    tp = TopicPartition(kafka.topic(key), 0)
    consumer = make_consumer(kafka, None)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[dict[str, Any]] = []
        while await consumer.position(tp) < end:
            for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                try:
                    out.append(codec.decode_plain(m.value))
                except SerializationError:
                    if not skip_undecodable:
                        raise
        return out
    finally:
        await consumer.stop()
