"""The pipeline's pure parts: batching bookkeeping, the dead-letter ratio guard and the
dead-letter record. The pipeline itself runs against the real broker in
tests/integration/test_pipeline.py."""
from __future__ import annotations

from aiokafka import TopicPartition

from services.common.pipeline import Batch, DeadLetterRatio, Message, dead_letter_headers, dead_letter_record
from services.common.registry import get_codec


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
            assert (one.ratio, one.exceeded(), list(one._outcomes)) == (many.ratio, many.exceeded(), list(many._outcomes))


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
    msg = Message(topic="argus.feedback", partition=2, offset=77, key=b"k", raw=b"\xffgarbage", timestamp_ms=1764000000000)
    rec = dead_letter_record(msg, "message does not start with the Confluent magic byte 0", "InvalidMessage.SerializationError", "g", "ingest")
    codec = get_codec("feedback-dlq")
    back = codec.decode(codec.encode(rec))
    assert back["original_value"] == b"\xffgarbage" and back["original_offset"] == 77
    headers = dict(dead_letter_headers(msg, "why", "InvalidMessage"))
    assert headers["argus.original_topic"] == b"argus.feedback"
    assert headers["argus.original_partition"] == b"2" and headers["argus.original_offset"] == b"77"
    assert headers["argus.reason"] == b"why"
