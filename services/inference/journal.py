"""The HTTP route's requests and answers on Kafka: one audited path for HTTP and Kafka.

A call to ``/v1/chat/completions`` is answered by the Router directly (no Kafka round
trip), and both sides of it are published the way a Kafka producer's request and the
bridge's answer are: the ``InferenceRequest`` (tenant from the API key) on
``argus.inference.requests`` and its ``InferenceResponse`` on
``argus.inference.responses``, so ingest, drift, alerting and retraining see HTTP
traffic like any other.

- The request is sent when the call is accepted, concurrently with generation; the answer
  when it is ready. The client gets its answer only once the broker acknowledged both
  (``acks=all``): an answer that could not be recorded is a 503, never an unlogged answer
  (``JournalUnavailable``).
- The request carries the header ``argus.answered_by: http``: the bridge commits past it
  without generating it again (it counts it). A producer that sets the header on its own
  request only keeps its own request from being answered; tenants' requests come through
  the gateway, which writes its own headers.
- The producer runs as the inference service's principal (``argus-inference``, roles
  ``inference-gateway`` and ``inference-bridge``: it may already write both topics).
  Replicas read its password from a file (``sasl_password_file``): a password is never
  carried in the Serve config, which the Ray dashboard shows.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.common.codec import from_json
from services.common.settings import KafkaSettings

ANSWERED_BY_HEADER = "argus.answered_by"
ANSWERED_BY_HTTP = b"http"

# the parts of KafkaSettings that may travel in a Serve config (no secret values)
_SECRET_FIELDS = {"sasl_password", "ssl_key_password", "schema_registry_password"}


class JournalUnavailable(RuntimeError):
    """The request or its answer was not acknowledged by the broker in time."""


def journal_config(kafka: KafkaSettings) -> dict[str, Any]:
    """``kafka`` as the Router's ``user_config`` entry: connection settings and file
    paths, never a secret value (ValueError when the password is only in the env)."""
    if kafka.security_protocol.startswith("SASL") and kafka.sasl_password_file is None:
        raise ValueError(
            "the HTTP route publishes its requests and answers to Kafka from Ray replicas, which read the SASL "
            "password from a file: set KAFKA__SASL_PASSWORD_FILE (a mounted Secret), not KAFKA__SASL_PASSWORD"
        )
    if kafka.ssl_key_password is not None:
        raise ValueError("the HTTP route's Kafka client takes no ssl_key_password (use an unencrypted key file)")
    return kafka.model_dump(mode="json", exclude=_SECRET_FIELDS)


def http_request_record(
    request_id: str,
    model: str,
    messages: list[dict[str, str]],
    tenant: str,
    *,
    user: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: list[str] | None = None,
    seed: int | None = None,
    metadata: dict[str, str] | None = None,
    created_at_ms: int | None = None,
) -> dict[str, Any]:
    """The InferenceRequest (plain JSON form) of an HTTP call.

    >>> r = http_request_record("5d2a3c4b-1e2f-4a5b-8c7d-9e0f1a2b3c4d", "m", [{"role": "user", "content": "hi"}], "acme")
    >>> r["tenant"], r["metadata"], r["stop_sequences"]
    ('acme', {'source': 'http'}, [])
    """
    return {
        "request_id": request_id,
        "created_at": created_at_ms if created_at_ms is not None else int(time.time() * 1000),
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "stop_sequences": list(stop or []),
        "seed": seed,
        "tenant": tenant,
        "user": user,
        "trace_id": None,
        "span_id": None,
        "deadline": None,
        "metadata": {**(metadata or {}), "source": "http"},
    }


class HttpJournal:
    """Publishes an HTTP call's request and answer (one producer per Router replica,
    started on first use)."""

    def __init__(self, config: dict[str, Any], timeout_s: float = 10.0) -> None:
        from services.common.registry import default_registry

        self.kafka = KafkaSettings.model_validate(config)
        self.timeout_s = timeout_s
        reg = default_registry()
        self.requests_topic = self.kafka.topic("inference-requests")
        self.responses_topic = self.kafka.topic("inference-responses")
        self.shadow_topic = self.kafka.topic("inference-shadow-responses")
        self.req_codec = reg.codec("inference-requests")
        self.resp_codec = reg.codec("inference-responses")
        self._req_schema = reg.schema_json("inference_request", self.req_codec.version)
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def _started(self) -> Any:
        async with self._lock:
            if self._producer is None:
                from services.common.kafka import make_producer

                producer = make_producer(self.kafka, linger_ms=0, client_id=self.kafka.client_id + "-http")
                try:
                    await asyncio.wait_for(producer.start(), self.timeout_s)
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send_request(self, request: dict[str, Any]) -> asyncio.Future:
        """Start sending the request; the returned future is its acknowledgement."""
        value = self.req_codec.encode(from_json(self._req_schema, request))
        return await self._send(self.requests_topic, value, request, [(ANSWERED_BY_HEADER, ANSWERED_BY_HTTP)])

    async def send_response(self, response: dict[str, Any]) -> asyncio.Future:
        return await self._send(self.responses_topic, self.resp_codec.encode(response), response, [])

    async def send_shadow(self, response: dict[str, Any]) -> asyncio.Future:
        """A shadow version's answer (logged, never returned to anyone), as the bridge does."""
        return await self._send(self.shadow_topic, self.resp_codec.encode(response), response, [])

    async def _send(self, topic: str, value: bytes, record: dict[str, Any], headers: list) -> asyncio.Future:
        try:
            producer = await self._started()
            return await asyncio.wait_for(
                producer.send(topic, value, key=str(record["request_id"]).encode(), headers=headers), self.timeout_s
            )
        except Exception as exc:  # the broker unreachable, refused, or the send timed out
            raise JournalUnavailable(f"could not publish to {topic}: {type(exc).__name__}") from exc

    async def acknowledged(self, *futures: asyncio.Future) -> None:
        """Wait until the broker acknowledged every send (JournalUnavailable if not)."""
        try:
            await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s)
        except Exception as exc:
            raise JournalUnavailable(
                f"the broker did not acknowledge the call's records: {type(exc).__name__}"
            ) from exc

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
