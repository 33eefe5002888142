"""The pipeline's pure parts: the dead-letter ratio guard, the dead-letter policy (record,
headers, truncation, retried delivery, storms). The pipeline itself runs against the real broker in
tests/integration/test_pipeline.py."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError

from services.common.dlq import DeadLetterPolicy, DeadLetterRatio, Message, dead_letter_headers, dead_letter_record
from services.common.metrics import Metrics
from services.common.registry import get_codec
from services.common.settings import KafkaSettings, PipelineSettings


def test_dead_letter_ratio_records_runs_of_valid_outcomes_like_one_by_one() -> None:
    import random

    rng = random.Random(5)
    for _ in range(200):
        one, many = DeadLetterRatio(0.5, 7, 3), DeadLetterRatio(0.5, 7, 3)
        for _ in range(rng.randrange(1, 8)):
            if rng.random() < 0.5:
                n = rng.randrange(0, 12)
                for _ in range(n):
                    one.record(False)
                many.record_valid(n)
            else:
                one.record(True)
                many.record(True)
            assert (one.ratio, one.exceeded(), list(one._outcomes)) == (
                many.ratio,
                many.exceeded(),
                list(many._outcomes),
            )


def test_dead_letter_ratio_trips_only_after_enough_messages() -> None:
    r = DeadLetterRatio(limit=0.5, window=10, min_messages=4)
    for _ in range(3):
        r.record(True)
    assert not r.exceeded()  # too few to judge
    r.record(True)
    assert r.exceeded()


def test_dead_letter_ratio_window_slides() -> None:
    r = DeadLetterRatio(limit=0.5, window=4, min_messages=4)
    for bad in (True, True, True, False):
        r.record(bad)
    assert r.exceeded()
    for _ in range(3):
        r.record(False)
    assert r.ratio == 0.0 and not r.exceeded()


def test_dead_letter_record_keeps_the_whole_message_and_encodes() -> None:
    msg = Message(
        topic="argus.feedback", partition=2, offset=77, key=b"k", raw=b"\xffgarbage", timestamp_ms=1764000000000
    )
    rec = dead_letter_record(
        msg,
        "message does not start with the Confluent magic byte 0",
        "InvalidMessage.SerializationError",
        "g",
        "ingest",
    )
    codec = get_codec("feedback-dlq")
    back = codec.decode(codec.encode(rec))
    assert back["original_value"] == b"\xffgarbage" and back["original_offset"] == 77
    headers = dict(dead_letter_headers(msg, "why", "InvalidMessage"))
    assert headers["argus.original_topic"] == b"argus.feedback"
    assert headers["argus.original_partition"] == b"2" and headers["argus.original_offset"] == b"77"
    assert headers["argus.reason"] == b"why"


def _policy(**kw: object) -> DeadLetterPolicy:
    settings = PipelineSettings(retry_initial_backoff_s=0.001, retry_max_backoff_s=0.002, **kw)
    return DeadLetterPolicy(
        kafka=KafkaSettings(topic_prefix="t1."),
        service="ingest",
        group="g",
        settings=settings,
        metrics=Metrics("ingest"),
    )


def test_dead_letter_topic_comes_from_the_registry_with_the_prefix() -> None:
    topic, codec = _policy().target("t1.argus.inference.requests")
    assert topic == "t1.argus.inference.requests.dlq" and codec.name == "dead_letter"


async def test_an_oversized_original_is_truncated_and_its_size_kept() -> None:
    sent: list[tuple] = []

    async def sender(topic: str, value: bytes, key: bytes | None, headers: list) -> None:
        sent.append((topic, value, key, headers))

    policy = _policy(dlq_max_original_bytes=1000)
    msg = Message("t1.argus.feedback", 0, 5, b"k", b"x" * 900_000, 1764000000000)
    await policy.send(sender, msg, "not Avro", "InvalidMessage.SerializationError")
    ((topic, value, key, headers),) = sent
    rec = get_codec("feedback-dlq").decode(value)
    assert topic == "t1.argus.feedback.dlq" and key == b"k" and len(value) < 2000
    assert rec["original_value"] == b"x" * 1000
    assert "truncated from 900000 to 1000 bytes" in rec["reason"]
    assert dict(headers)["argus.original_size"] == b"900000"


async def test_a_failed_dead_letter_write_is_retried_until_acknowledged() -> None:
    attempts = []

    async def flaky(topic: str, value: bytes, key: bytes | None, headers: list) -> None:
        attempts.append(topic)
        if len(attempts) < 4:
            raise KafkaConnectionError("broker down")

    await asyncio.wait_for(_policy().send(flaky, Message("t1.argus.feedback", 1, 9, None, b"?", 0), "bad", "X"), 5)
    assert len(attempts) == 4


async def test_a_storm_is_flagged_per_partition_and_clears_when_valid_traffic_returns() -> None:
    async def sender(*_: object) -> None:
        return None

    policy = _policy(dlq_ratio_limit=0.5, dlq_ratio_window=20, dlq_ratio_min_messages=10)
    topic = "t1.argus.inference.requests"
    for i in range(12):
        await policy.send(sender, Message(topic, 0, i, None, b"?", 0), "bad", "X")
    policy.record_valid(topic, 1, 50)  # another partition, all valid
    assert policy.in_storm(topic, 0) and not policy.in_storm(topic, 1)
    assert policy.metrics.value("argus_dead_letter_storm", topic=topic, partition="0") == 1
    assert policy.metrics.value("argus_dead_letter_storms_total", topic=topic) == 1
    policy.record_valid(topic, 0, 20)
    assert not policy.in_storm(topic, 0) and policy.storms == []
    assert policy.metrics.value("argus_dead_letter_storm", topic=topic, partition="0") == 0


async def test_a_dead_letter_topic_without_its_own_dead_letter_topic_does_not_stop_the_consumer() -> None:
    async def sender(*_: object) -> None:
        raise AssertionError("nothing to send to")

    fut = _policy().send(sender, Message("t1.argus.feedback.dlq", 0, 1, None, b"?", 0), "bad", "X")
    assert (await fut) is None
