"""What the CLI reads and writes on the governance topics, signed by the person running
it: the whole of a one-partition topic, a record published (acks=all), a person's key,
and a person's audit submission (docs/governance.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

from services.cli.base import fail as _fail
from services.cli.base import settings as _settings


def read_all(key: str) -> list[dict]:
    """Every record of a one-partition registry topic, from the beginning (plain values)."""
    from aiokafka import TopicPartition

    from services.common.kafka import make_consumer
    from services.common.registry import get_codec

    s = _settings()
    codec = get_codec(key)

    async def run() -> list[dict]:
        consumer = make_consumer(s.kafka, None)
        await consumer.start()
        try:
            tp = TopicPartition(s.kafka.topic(key), 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            out: list[dict] = []
            while await consumer.position(tp) < end:
                for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    out.append(codec.decode_plain(m.value))
            return out
        finally:
            await consumer.stop()

    return asyncio.run(run())


def signer_for(by: str, key: Optional[Path]):  # noqa: ANN202 - Signer
    from services.common.governance import Signer, key_path
    from services.common.signing import SignatureError

    try:
        return Signer.load(by, key or key_path(by))
    except (SignatureError, OSError, ValueError) as exc:
        _fail(f"cannot sign as {by}: {exc}")


def publish(key: str, rec: dict, kafka_key: str) -> None:
    from services.common.kafka import make_producer
    from services.common.registry import get_codec

    s = _settings()

    async def run() -> None:
        producer = make_producer(s.kafka)
        try:
            await producer.start()
            await producer.send_and_wait(s.kafka.topic(key), get_codec(key).encode(rec), key=kafka_key.encode())
        finally:
            await producer.stop()  # also after a failed start: nothing left open

    asyncio.run(run())


def submit(signer, action: str, subject: str, detail: dict) -> dict:  # noqa: ANN001
    """Publish a person's signed submission on argus.audit; the retraining service
    witnesses it into its chain (docs/governance.md)."""
    from services.common.audit import submission

    ev = submission(signer, action, subject, detail)
    try:
        publish("audit", ev, ev["writer"])
    except Exception as exc:  # the broker unreachable or refusing: nothing was recorded, say so plainly
        _fail(f"the audit trail (argus.audit) did not take the {action} event: {type(exc).__name__}: {exc}")
    return ev
