"""Golden examples through the real broker: encode each in the wire format, produce it
to a copy of its topic, consume it back, decode, compare. Used by ``argus demo`` and the
tests.

The copies carry the prefix ``selftest.`` (same partitions and config, created here):
the examples are fixtures (an approved retraining trigger, a model version, alerts), and
on the real topics the running services would act on them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from services.common.codec import fill_defaults, to_json
from services.common.kafka import make_consumer, make_producer
from services.common.registry import SchemaRegistry, default_registry
from services.common.settings import KafkaSettings

SELFTEST_PREFIX = "selftest."


@dataclass
class RoundTrip:
    topic: str
    example: str
    partition: int
    offset: int
    equal: bool
    kafka_topic: str = ""  # where it went (the ``selftest.`` copy of the registry topic)


async def roundtrip_examples(
    kafka: KafkaSettings, registry: SchemaRegistry | None = None, timeout_s: float = 30.0
) -> list[RoundTrip]:
    from services.common.kafka import ensure_topics

    reg = registry or default_registry()
    kafka = kafka.model_copy(update={"topic_prefix": f"{kafka.topic_prefix}{SELFTEST_PREFIX}"})
    await ensure_topics(kafka, reg)
    producer = make_producer(kafka)
    await producer.start()
    sent: dict[tuple[str, int, int], tuple[str, str, Any]] = {}
    try:
        for key in sorted(reg.topics):
            name = kafka.topic_prefix + reg.topic(key).name
            for version, items in reg.examples(key).items():
                for path, record in items:
                    writer = reg.codec(key, version)  # each example in the version it was written in
                    meta = await producer.send_and_wait(name, writer.encode(record), key=path.stem.encode())
                    sent[(name, meta.partition, meta.offset)] = (key, f"{version}/{path.name}", record)
    finally:
        await producer.stop()
    consumer = make_consumer(kafka, None)
    await consumer.start()
    results: list[RoundTrip] = []
    try:
        tps = sorted({TopicPartition(t, p) for t, p, _ in sent})
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, min(o for t, p, o in sent if (t, p) == (tp.topic, tp.partition)))
        deadline = asyncio.get_running_loop().time() + timeout_s
        pending = set(sent)
        while pending and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                for m in msgs:
                    k = (tp.topic, tp.partition, m.offset)
                    if k not in pending:
                        continue
                    pending.discard(k)
                    key, example, original = sent[k]
                    decoded = reg.codec(key).decode(m.value)
                    spec = reg.topic(key)
                    expected = fill_defaults(reg.schema_json(spec.schema, spec.version), original)
                    results.append(
                        RoundTrip(key, example, tp.partition, m.offset, to_json(decoded) == to_json(expected), tp.topic)
                    )
        for k in pending:
            key, example, _ = sent[k]
            results.append(RoundTrip(key, example, k[1], k[2], False, k[0]))
    finally:
        await consumer.stop()
    return sorted(results, key=lambda r: (r.topic, r.example))
