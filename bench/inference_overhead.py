"""Overhead of the inference path (Kafka bridge + Ray Serve) over calling the engine
directly, on the same model, prompts and settings, in one run.

- baseline: ``LlamaCppEngine.generate`` in-process, one request at a time.
- Serve: ``Router.infer`` through a DeploymentHandle, one at a time.
- bridge + Serve: produce a request to Kafka, time until its response is consumed from
  the responses topic, one at a time (end to end, what a producer sees).
- saturation: N requests produced at once; completed requests per second, against the
  bare engine's sequential throughput (one llama.cpp replica, one thread: the same
  compute).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import Result, pct

PROMPTS = [
    f"In one sentence, what is {x}?"
    for x in ("Kafka", "ClickHouse", "a GPU", "drift", "an alert", "a canary release", "Python", "a model registry")
]


def run(n: int = 40, saturation_n: int = 60, max_tokens: int = 16) -> list[Result]:
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # a local cluster makes its own token
    os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1.0")
    import ray
    from ray import serve

    from services.common.llm import GenerationParams, LlamaCppEngine
    from services.inference.responses import chat_params
    from services.inference.settings import EngineSettings
    from services.stack.kafka_local import KafkaLocal, free_port

    engine_settings = EngineSettings(max_tokens=max_tokens, max_batch_size=1)
    reqs = [
        {
            "request_id": str(uuid.uuid4()),
            "model": "smollm2-135m-instruct",
            "tenant": "bench",
            "user": f"u{i}",
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens,
        }
        for i in range(n)
    ]

    # baseline: the bare engine
    engine = LlamaCppEngine(n_threads=engine_settings.n_threads)
    for r in reqs[:3]:
        engine.generate(GenerationParams(**chat_params(r, max_tokens, engine_settings.system_prompt)))
    bare = []
    t0 = time.perf_counter()
    for r in reqs:
        t = time.perf_counter()
        engine.generate(GenerationParams(**chat_params(r, max_tokens, engine_settings.system_prompt)))
        bare.append((time.perf_counter() - t) * 1000)
    bare_tput = n / (time.perf_counter() - t0)
    del engine

    home = Path(tempfile.mkdtemp(prefix="argus-bench-"))
    repo = Path(__file__).resolve().parents[1]
    kafka = KafkaLocal(home=home, port=free_port(), controller_port=free_port(), libs_dir=repo / ".argus/kafka/libs")
    kafka.start()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        return asyncio.run(
            _measure(kafka.client_settings(topic_prefix="bench."), reqs, bare, bare_tput, engine_settings, saturation_n)
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        kafka.stop()


async def _measure(kafka, reqs, bare, bare_tput, engine_settings, saturation_n) -> list[Result]:  # noqa: ANN001
    from aiokafka import TopicPartition

    from services.common.kafka import ensure_topics, make_consumer
    from services.common.registry import get_codec
    from services.inference.app import deploy
    from services.inference.bridge import InferenceBridge
    from services.inference.settings import BridgeSettings, InferenceSettings
    from services.sdk.producer import ArgusProducer

    await ensure_topics(kafka)
    settings = InferenceSettings(
        kafka=kafka,
        engine=engine_settings,
        bridge=BridgeSettings(group_id="bench", max_in_flight=8),
        allow_unsigned_models=True,  # the packaged model: the bench measures overhead, not governance
    )
    router = deploy(settings)
    for r in reqs[:3]:
        await router.infer.remote(r)
    serve_lat = []
    for r in reqs:
        t = time.perf_counter()
        await router.infer.remote(dict(r, request_id=str(uuid.uuid4())))
        serve_lat.append((time.perf_counter() - t) * 1000)

    bridge = InferenceBridge(settings, router)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    consumer = make_consumer(kafka, None)
    await consumer.start()
    name = kafka.topic("inference-responses")
    tps = [TopicPartition(name, p) for p in range(3)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    codec = get_codec("inference-responses")
    e2e = []
    # a latency-sensitive producer (what ArgusClient configures): no linger
    async with ArgusProducer(kafka, linger_ms=0) as producer:

        async def wait_for(ids: set[str]) -> None:
            while ids:
                for msgs in (await consumer.getmany(timeout_ms=100)).values():
                    for m in msgs:
                        ids.discard(str(codec.decode(m.value)["request_id"]))

        for r in reqs[:3]:
            rid = await producer.request(r["messages"], tenant="bench", max_tokens=r["max_tokens"], wait=True)
            await wait_for({rid})
        for r in reqs:
            t = time.perf_counter()
            rid = await producer.request(
                r["messages"], tenant="bench", user=r["user"], max_tokens=r["max_tokens"], wait=True
            )
            await wait_for({rid})
            e2e.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        ids = set()
        for i in range(saturation_n):
            r = reqs[i % len(reqs)]
            ids.add(await producer.request(r["messages"], tenant="bench", user=f"s{i}", max_tokens=r["max_tokens"]))
        await producer.flush()
        await wait_for(ids)
        sat_tput = saturation_n / (time.perf_counter() - t)
    await consumer.stop()
    stop.set()
    await task

    def over(lat: list[float], q: float) -> float:
        return pct(lat, q) - pct(bare, q)

    return [
        Result(
            "inference",
            "Serve handle latency p50",
            pct(serve_lat, 0.5),
            "bare engine p50",
            pct(bare, 0.5),
            "ms",
            "ratio <= 1.25",
            False,
        ),
        Result(
            "inference",
            "Serve handle latency p99",
            pct(serve_lat, 0.99),
            "bare engine p99",
            pct(bare, 0.99),
            "ms",
            "ratio <= 1.5",
            False,
        ),
        Result(
            "inference",
            "bridge+Serve end-to-end p50",
            pct(e2e, 0.5),
            "bare engine p50",
            pct(bare, 0.5),
            "ms",
            "ratio <= 1.5",
            False,
        ),
        Result(
            "inference",
            "bridge+Serve end-to-end p99",
            pct(e2e, 0.99),
            "bare engine p99",
            pct(bare, 0.99),
            "ms",
            "ratio <= 2.0",
            False,
        ),
        Result(
            "inference",
            "bridge+Serve overhead p50 (added ms)",
            over(e2e, 0.5),
            "bare engine p50",
            pct(bare, 0.5),
            "ms",
            "(informational)",
            False,
        ),
        Result(
            "inference",
            "throughput at saturation",
            sat_tput,
            "bare engine, sequential",
            bare_tput,
            "req/s",
            "ratio >= 0.8",
        ),
    ]
