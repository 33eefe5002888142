"""``ArgusProducer``: publish inference requests (and feedback) from Python.

It validates each request against the registry's schema, encodes it in the Confluent
wire format, sends it keyed by ``request_id`` with an idempotent producer, and returns
the ``request_id`` to match the response on ``argus.inference.responses``. Producers in
other languages do the same with any Confluent Avro serializer and the schema in
``schemas/avro/``.

Example::

    async with ArgusProducer(KafkaSettings()) as producer:
        request_id = await producer.request(
            [{"role": "user", "content": "What is Kafka?"}], tenant="acme", max_tokens=64)
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from services.common.codec import SerializationError, from_json
from services.common.kafka import make_producer
from services.common.registry import default_registry
from services.common.settings import KafkaSettings


class ArgusProducer:
    def __init__(
        self,
        kafka: KafkaSettings,
        model: str = "smollm2-135m-instruct",
        requests_topic: str | None = None,
        **producer_overrides: Any,
    ) -> None:
        self.kafka = kafka
        self.model = model
        reg = default_registry()
        self._req_codec = reg.codec("inference-requests")
        self._fb_codec = reg.codec("feedback")
        self._req_schema = reg.schema_json("inference_request", self._req_codec.version)
        # the shared topic (trusted first-party producers) or a tenant's own (ArgusClient)
        self._requests_topic = requests_topic or kafka.topic("inference-requests")
        self._feedback_topic = kafka.topic("feedback")
        self._producer = make_producer(kafka, **producer_overrides)
        self.sent = 0

    async def __aenter__(self) -> "ArgusProducer":
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    def build_request(
        self,
        messages: list[dict[str, str]],
        *,
        tenant: str,
        model: str | None = None,
        request_id: str | None = None,
        deadline_s: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        now = int(time.time() * 1000)
        record = {
            "request_id": request_id or str(uuid.uuid4()),
            "created_at": now,
            "model": model or self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "tenant": tenant,
            **fields,
        }
        if deadline_s is not None:
            record["deadline"] = now + int(deadline_s * 1000)
        return from_json(self._req_schema, record)

    async def send_record(self, record: dict[str, Any], wait: bool = False) -> str:
        """Send a complete InferenceRequest record; raises SerializationError if invalid."""
        value = self._req_codec.encode(record)
        key = str(record["request_id"]).encode()
        if wait:
            await self._producer.send_and_wait(self._requests_topic, value, key=key)
        else:
            await self._producer.send(self._requests_topic, value, key=key)
        self.sent += 1
        return str(record["request_id"])

    async def request(self, messages: list[dict[str, str]], *, tenant: str, wait: bool = False, **fields: Any) -> str:
        """Validate, encode and send one request; returns its request_id."""
        return await self.send_record(self.build_request(messages, tenant=tenant, **fields), wait=wait)

    async def feedback(
        self, request_id: str, *, tenant: str, kind: str = "thumbs", score: float | None = None, **fields: Any
    ) -> str:
        record = {
            "feedback_id": str(uuid.uuid4()),
            "request_id": request_id,
            "tenant": tenant,
            "kind": kind,
            "score": score,
            "created_at": int(time.time() * 1000),
            **fields,
        }
        await self._producer.send(self._feedback_topic, self._fb_codec.encode(record), key=request_id.encode())
        return record["feedback_id"]

    async def flush(self) -> None:
        await self._producer.flush()


__all__ = ["ArgusProducer", "SerializationError"]
