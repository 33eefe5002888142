"""Every golden example through the real broker, and interop with a second Avro
implementation (Apache Avro's Python library) in the same wire format."""

from __future__ import annotations

import datetime
import io
import struct

import avro.io
import avro.schema

from services.common.codec import fill_defaults, to_json
from services.common.kafka import make_consumer, make_producer
from services.common.registry import default_registry, get_codec
from services.common.roundtrip import roundtrip_examples
from services.common.settings import KafkaSettings

REG = default_registry()


async def test_every_golden_example_round_trips_through_kafka(kafka_settings: KafkaSettings) -> None:
    results = await roundtrip_examples(kafka_settings)
    expected = sum(len(items) for key in REG.topics for items in REG.examples(key).values())
    assert len(results) == expected
    assert [r for r in results if not r.equal] == []
    # fixtures never reach the topics the services consume
    assert all(r.kafka_topic.startswith(f"{kafka_settings.topic_prefix}selftest.argus.") for r in results)


async def test_message_from_apache_avro_decodes_after_the_broker(kafka_settings: KafkaSettings) -> None:
    codec = get_codec("feedback")
    schema = avro.schema.parse(REG.schema_file("feedback", 1).read_text())
    record = fill_defaults(REG.schema_json("feedback", 1), REG.examples("feedback")[1][0][1])
    theirs = dict(
        record, created_at=datetime.datetime.fromtimestamp(record["created_at"] / 1000, tz=datetime.timezone.utc)
    )
    buf = io.BytesIO(b"\x00" + struct.pack(">I", codec.schema_id))
    buf.seek(5)
    avro.io.DatumWriter(schema).write(theirs, avro.io.BinaryEncoder(buf))

    topic = kafka_settings.topic("feedback")
    producer = make_producer(kafka_settings)
    await producer.start()
    meta = await producer.send_and_wait(topic, buf.getvalue(), key=record["request_id"].encode())
    await producer.stop()

    consumer = make_consumer(kafka_settings, None)
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        msgs = (await consumer.getmany(tp, timeout_ms=10000))[tp]
    finally:
        await consumer.stop()
    assert to_json(codec.decode(msgs[0].value)) == to_json(record)
