"""The Kafka bridge's own cost, TLS + SCRAM against plaintext, and the tenant path.

The model is taken out on purpose (a router that answers at once), so what is measured
is what the bridge adds: produce -> broker -> bridge (decode, validate, dispatch) ->
response produced and acknowledged -> consumer. Three runs, each with sequential
round trips after a warm-up, on real brokers started here:

- plaintext broker, shared topics (the baseline);
- secure broker (SASL_SSL, SCRAM-SHA-512, ACLs), shared topics, each side its own principal;
- secure broker, a tenant's own topics through the tenant gateway (``ArgusClient``), i.e.
  one more hop (the gateway's forward) than the shared path.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.common import Result, pct

REPO = Path(__file__).resolve().parents[1]


class _InstantRouter:
    """Answers every request at once: the bridge's path without a model."""

    class _Infer:
        async def remote(self, request: dict[str, Any]) -> dict[str, Any]:
            return {
                "primary": {
                    "version": "v1",
                    "text": "ok",
                    "finish_reason": "stop",
                    "input_tokens": 1,
                    "output_tokens": 1,
                    "latency_ms": 0.0,
                },
                "shadows": [],
            }

    infer = _Infer()


def run(n: int = 300, warmup: int = 30) -> list[Result]:
    plain = _one_broker(False, n, warmup)
    secure = _one_broker(True, n, warmup)
    return [
        Result(
            "bridge",
            "round trip p50, SASL_SSL + ACLs broker, shared topics (no model)",
            pct(secure["shared"], 0.5),
            "the same on a plaintext broker",
            pct(plain["shared"], 0.5),
            "ms",
            "added <= 5 ms",
            False,
        ),
        Result(
            "bridge",
            "round trip p99, SASL_SSL + ACLs broker, shared topics (no model)",
            pct(secure["shared"], 0.99),
            "the same on a plaintext broker",
            pct(plain["shared"], 0.99),
            "ms",
            "(informational)",
            False,
        ),
        Result(
            "bridge",
            "round trip p50, a tenant's topics through the gateway (ArgusClient), SASL_SSL",
            pct(secure["tenant"], 0.5),
            "shared topics on the same secure broker",
            pct(secure["shared"], 0.5),
            "ms",
            "added <= 10 ms",
            False,
        ),
    ]


def _one_broker(secure: bool, n: int, warmup: int) -> dict[str, list[float]]:
    from services.common import kafka_acl
    from services.stack.credentials import secret
    from services.stack.kafka_local import KafkaLocal, free_port

    home = Path(tempfile.mkdtemp(prefix="argus-bench-bridge-"))
    kafka = KafkaLocal(
        home=home, port=free_port(), controller_port=free_port(), libs_dir=REPO / ".argus/kafka/libs", secure=secure
    )
    kafka.start()
    try:
        admin = kafka.client_settings(topic_prefix="bench.")
        if secure:
            principals = kafka_acl.load_principals()
            kafka_acl.upsert_users(admin, {p: secret(home, f"kafka/{p}").get_secret_value() for p in principals})
            kafka_acl.apply(admin, kafka_acl.plan("bench."))
        return asyncio.run(_measure(kafka, admin, secure, n, warmup))
    finally:
        kafka.stop()


async def _measure(kafka: Any, admin: Any, secure: bool, n: int, warmup: int) -> dict[str, list[float]]:
    from aiokafka import TopicPartition

    from services.common import tenants
    from services.common.kafka import ensure_topics, make_consumer
    from services.common.registry import get_codec
    from services.inference.bridge import InferenceBridge
    from services.inference.gateway import TenantGateway
    from services.inference.settings import BridgeSettings, GatewaySettings, InferenceSettings
    from services.sdk.client import ArgusClient
    from services.sdk.producer import ArgusProducer

    await ensure_topics(admin)
    service = kafka.client_settings("argus-inference", "bench.", "argus-inference") if secure else admin
    producer_kafka = kafka.client_settings("argus-producer", "bench.", "argus-producer") if secure else admin
    reader_kafka = kafka.client_settings("argus-operator", "bench.", "argus-operator") if secure else admin
    settings = InferenceSettings(
        kafka=service,
        allow_unsigned_models=True,  # the packaged model: the bench measures overhead, not governance
        bridge=BridgeSettings(group_id="argus-inference-bench", max_in_flight=8, commit_interval_s=0.5),
        gateway=GatewaySettings(group_id="argus-inference-gateway-bench", discovery_interval_s=1.0),
    )
    bridge = InferenceBridge(settings, _InstantRouter())
    gateway = TenantGateway(settings) if secure else None
    stop = asyncio.Event()
    tasks = [asyncio.create_task(bridge.run(stop))]
    if gateway is not None:
        await tenants.provision(admin, "bench", "bench-tenant-password")
        tasks.append(asyncio.create_task(gateway.run(stop)))
    out: dict[str, list[float]] = {"shared": [], "tenant": []}
    consumer = make_consumer(reader_kafka, None)
    await consumer.start()
    name = admin.topic("inference-responses")
    tps = [TopicPartition(name, p) for p in range(3)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    codec = get_codec("inference-responses")
    messages = [{"role": "user", "content": "ping"}]
    try:
        async with ArgusProducer(producer_kafka, linger_ms=0) as producer:

            async def wait_for(rid: str) -> None:
                while True:
                    for msgs in (await consumer.getmany(timeout_ms=50)).values():
                        for m in msgs:
                            if str(codec.decode(m.value)["request_id"]) == rid:
                                return

            for i in range(warmup + n):
                t = time.perf_counter()
                rid = await producer.request(messages, tenant="bench", user=f"u{i}", max_tokens=1, wait=True)
                await wait_for(rid)
                if i >= warmup:
                    out["shared"].append((time.perf_counter() - t) * 1000)
        if secure:
            tenant_kafka = admin.model_copy(
                update={
                    "sasl_username": tenants.principal("bench"),
                    "sasl_password_file": None,
                    "sasl_password": SecretStr("bench-tenant-password"),
                    "client_id": "tenant-bench",
                }
            )
            async with ArgusClient(tenant_kafka, "bench", timeout_s=60) as client:
                for i in range(warmup + n):
                    t = time.perf_counter()
                    await client.complete(messages, max_tokens=1)
                    if i >= warmup:
                        out["tenant"].append((time.perf_counter() - t) * 1000)
    finally:
        await consumer.stop()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out
