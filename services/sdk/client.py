"""``ArgusClient``: request–reply over a tenant's own topics.

``argus tenants add NAME`` creates the tenant's principal and its two topics and prints
the settings this client reads (``ARGUS_KAFKA__*``, ``ARGUS_TENANT``). The client
publishes to ``argus.tenant.<name>.requests`` and reads its answers from
``argus.tenant.<name>.responses``: it needs no consumer group (it reads every partition
of the reply topic from the moment it started, and keeps the answers to its own
requests), so any number of clients of one tenant can run side by side.

Example::

    async with ArgusClient.from_env() as client:
        response = await client.complete([{"role": "user", "content": "What is Kafka?"}], max_tokens=32)
        print(response["status"], response["text"])
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.codec import SerializationError
from services.common.kafka import make_consumer
from services.common.registry import default_registry
from services.common.settings import KafkaSettings
from services.common.tenants import check_name, request_topic, response_topic
from services.sdk.producer import ArgusProducer


class ClientSettings(BaseSettings):
    """What ``argus tenants add`` prints for Python: ``ARGUS_KAFKA__*`` and ``ARGUS_TENANT``."""

    model_config = SettingsConfigDict(env_prefix="ARGUS_", env_nested_delimiter="__", frozen=True, extra="ignore")

    kafka: KafkaSettings = KafkaSettings()
    tenant: str


class ReplyTimeout(asyncio.TimeoutError):
    """No answer within the timeout; the request may still be answered later."""


class ArgusClient:
    def __init__(
        self, kafka: KafkaSettings, tenant: str, model: str = "smollm2-135m-instruct", timeout_s: float = 60.0
    ) -> None:
        self.kafka = kafka
        self.tenant = check_name(tenant)
        self.timeout_s = timeout_s
        self.requests_topic = request_topic(tenant, kafka.topic_prefix)
        self.responses_topic = response_topic(tenant, kafka.topic_prefix)
        self._codec = default_registry().codec("inference-responses")
        # request-reply: every request is sent on its own, so waiting to batch only adds latency
        self._producer = ArgusProducer(kafka, model=model, requests_topic=self.requests_topic, linger_ms=0)
        self._consumer = make_consumer(kafka, None, auto_offset_reset="latest", isolation_level="read_uncommitted")
        self._waiting: dict[str, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self.undecodable = 0  # reply-topic records that were not InferenceResponses

    @classmethod
    def from_env(cls, **kwargs: Any) -> "ArgusClient":
        s = ClientSettings()
        return cls(s.kafka, s.tenant, **kwargs)

    async def __aenter__(self) -> "ArgusClient":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout_s: float = 30.0) -> None:
        # no consumer group: every partition of the reply topic is this client's, and each
        # starts at its end offset, resolved before the first request can be sent
        self._consumer.subscribe([self.responses_topic])
        await self._consumer.start()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._consumer.assignment():
            if asyncio.get_running_loop().time() > deadline:
                await self._consumer.stop()
                raise RuntimeError(
                    f"reply topic {self.responses_topic} not readable (is tenant {self.tenant!r} created, "
                    "and are these its credentials?)"
                )
            await asyncio.sleep(0.05)
        for tp in self._consumer.assignment():
            await self._consumer.position(tp)
        await self._producer.__aenter__()
        self._reader = asyncio.create_task(self._read(), name=f"argus-client-{self.tenant}")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
        await self._producer.__aexit__()
        await self._consumer.stop()

    async def _read(self) -> None:
        async for rec in self._consumer:
            try:
                resp = self._codec.decode(rec.value)
            except SerializationError:
                self.undecodable += 1
                continue
            fut = self._waiting.get(str(resp["request_id"]))
            if fut is not None and not fut.done() and not resp.get("shadow"):
                fut.set_result(resp)

    async def complete(
        self, messages: list[dict[str, str]], *, timeout_s: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Publish one request and wait for its ``InferenceResponse`` (a dict, the Avro
        record); :class:`ReplyTimeout` after ``timeout_s`` (default the client's)."""
        if self._reader is None:
            raise RuntimeError("start the client first (async with ArgusClient(...))")
        if self._reader.done():
            self._reader.result()  # the reader failed (e.g. authorization): say why
        record = self._producer.build_request(messages, tenant=self.tenant, **fields)
        request_id = str(record["request_id"])
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        try:
            await self._producer.send_record(record, wait=True)
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout_s or self.timeout_s)
            except asyncio.TimeoutError:
                raise ReplyTimeout(f"no answer to {request_id} within {timeout_s or self.timeout_s}s") from None
        finally:
            self._waiting.pop(request_id, None)


__all__ = ["ArgusClient", "ClientSettings", "ReplyTimeout"]
