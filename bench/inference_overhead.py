"""Overhead of the inference path (Kafka bridge + Ray Serve) over calling the engine
directly, on the same model, prompts and settings, in one run.

- baseline: ``LlamaCppEngine.generate`` in this process, one request at a time, paired:
  called right before each request of the path it is compared with (never at the same
  time), so that both see the machine in the same state. The bare engine measured once
  before the broker and Ray start is reported too: the machine's drift between the two.
- Serve: ``Router.infer`` through a DeploymentHandle, one at a time.
- bridge + Serve: produce a request to Kafka, time until its response is consumed from
  the responses topic, one at a time (end to end, what a producer sees).
- saturation: N requests produced at once; completed requests per second, against the
  bare engine's sequential throughput (one llama.cpp replica, one thread: the same
  compute).
- HTTP route: ``POST /v1/chat/completions`` with an API key, one at a time, not streamed
  (until the whole answer) and streamed (time to the first content chunk, against the
  bare engine's time to first token); each call is published to Kafka and acknowledged
  before it is answered.
- the hops without the model, for the breakdown in docs/inference.md: a Serve handle
  call that does no work (``Router.routing``), and the Kafka round trip through the
  bridge with a router that answers at once (produce, broker, bridge, produce, consume).
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
    from services.inference.serveconfig import LOW_LATENCY_CALLER_ENV

    for name, value in LOW_LATENCY_CALLER_ENV.items():  # what the inference service sets (serve_low_latency)
        os.environ.setdefault(name, value)
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
    bare, bare_ttft = [], []
    t0 = time.perf_counter()
    for r in reqs:
        t = time.perf_counter()
        g = engine.generate(GenerationParams(**chat_params(r, max_tokens, engine_settings.system_prompt)))
        bare.append((time.perf_counter() - t) * 1000)
        bare_ttft.append(g.time_to_first_token_ms or 0.0)
    bare_tput = n / (time.perf_counter() - t0)
    del engine

    home = Path(tempfile.mkdtemp(prefix="argus-bench-"))
    repo = Path(__file__).resolve().parents[1]
    kafka = KafkaLocal(home=home, port=free_port(), controller_port=free_port(), libs_dir=repo / ".argus/kafka/libs")
    kafka.start()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    http_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    try:
        return asyncio.run(
            _measure(
                kafka.client_settings(topic_prefix="bench."),
                reqs,
                (bare, bare_ttft, bare_tput),
                engine_settings,
                saturation_n,
                (home, http_port),
            )
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        kafka.stop()


async def _measure(kafka, reqs, baseline, engine_settings, saturation_n, http) -> list[Result]:  # noqa: ANN001
    import httpx
    from aiokafka import TopicPartition

    from bench.bridge_overhead import _InstantRouter
    from services.common.api_keys import KeyStore
    from services.common.kafka import ensure_topics, make_consumer
    from services.common.llm import GenerationParams, LlamaCppEngine
    from services.common.registry import get_codec
    from services.inference.app import deploy
    from services.inference.bridge import InferenceBridge
    from services.inference.responses import chat_params
    from services.inference.settings import BridgeSettings, InferenceSettings
    from services.sdk.producer import ArgusProducer

    bare, _, bare_tput = baseline
    home, http_port = http
    await ensure_topics(kafka)
    store = KeyStore(home / "api-keys.json")
    _, key = store.create("bench", name="bench", rate_per_minute=100_000)
    settings = InferenceSettings(
        kafka=kafka,
        engine=engine_settings,
        bridge=BridgeSettings(group_id="bench", max_in_flight=8),
        allow_unsigned_models=True,  # the packaged model: the bench measures overhead, not governance
        http_api_keys_file=store.path,
    )
    router = deploy(settings)
    for r in reqs[:3]:
        await router.infer.remote(r)
    # the paired baseline: the bare engine in this process, called right before each request
    # of a path (never at the same time), so both see the machine as it is at that moment.
    # Measured apart (the bare engine first, the paths minutes later), the machine's own
    # drift (this one: 580-720 ms for the same 24 prompts from one minute to the next) was
    # larger than the overhead.
    engine = LlamaCppEngine(n_threads=engine_settings.n_threads)

    async def bare_call(r: dict) -> tuple[float, float]:
        params = GenerationParams(**chat_params(r, engine_settings.max_tokens, engine_settings.system_prompt))
        t = time.perf_counter()
        g = await asyncio.to_thread(engine.generate, params)
        return (time.perf_counter() - t) * 1000, g.time_to_first_token_ms or 0.0

    await bare_call(reqs[0])
    noop = []
    for _ in range(len(reqs)):
        t = time.perf_counter()
        await router.routing.remote()
        noop.append((time.perf_counter() - t) * 1000)
    serve_lat, serve_bare = [], []
    for r in reqs:
        serve_bare.append((await bare_call(r))[0])
        t = time.perf_counter()
        await router.infer.remote(dict(r, request_id=str(uuid.uuid4())))
        serve_lat.append((time.perf_counter() - t) * 1000)

    # the HTTP route, whole answers and streamed (time to the first content chunk)
    http_lat, http_ttfb, http_bare, http_bare_ttft = [], [], [], []
    async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        url = f"http://127.0.0.1:{http_port}/v1/chat/completions"

        async def call(r: dict, stream: bool) -> tuple[float, float | None]:
            body = {"messages": r["messages"], "max_tokens": r["max_tokens"], "user": r["user"], "stream": stream}
            first = None
            t = time.perf_counter()
            async with client.stream("POST", url, json=body) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if first is None and stream and '"content":"' in line and '"content":""' not in line:
                        first = (time.perf_counter() - t) * 1000
            return (time.perf_counter() - t) * 1000, first

        for r in reqs[:3]:
            await call(r, False)
            await call(r, True)
        for r in reqs:
            http_bare.append((await bare_call(r))[0])
            http_lat.append((await call(r, False))[0])
        for r in reqs:
            http_bare_ttft.append((await bare_call(r))[1])
            http_ttfb.append((await call(r, True))[1] or float("nan"))

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
    e2e, e2e_bare = [], []
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
            e2e_bare.append((await bare_call(r))[0])
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
    stop.set()
    await task

    # the Kafka round trip through the bridge without the model (a router that answers at once)
    instant = InferenceBridge(
        settings.model_copy(update={"bridge": BridgeSettings(group_id="bench-instant", max_in_flight=8)}),
        _InstantRouter(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(instant.run(stop))
    await consumer.seek_to_end(*tps)
    kafka_rt = []
    async with ArgusProducer(kafka, linger_ms=0) as producer:
        for i in range(len(reqs) + 10):
            t = time.perf_counter()
            rid = await producer.request(reqs[0]["messages"], tenant="bench", user=f"k{i}", wait=True)
            await wait_for({rid})
            if i >= 10:
                kafka_rt.append((time.perf_counter() - t) * 1000)
    await consumer.stop()
    stop.set()
    await task

    def row(figure: str, values: list[float], base: list[float], q: float, target: str, base_name: str) -> Result:
        return Result("inference", figure, pct(values, q), base_name, pct(base, q), "ms", target, False)

    def added(figure: str, values: list[float], base: list[float], q: float, base_name: str) -> Result:
        return Result(
            "inference", figure, pct(values, q) - pct(base, q), base_name, pct(base, q), "ms", "(informational)", False
        )

    paired = "bare engine p50, paired"
    return [
        row("Serve handle latency p50", serve_lat, serve_bare, 0.5, "ratio <= 1.25", paired),
        row("Serve handle latency p99", serve_lat, serve_bare, 0.99, "ratio <= 1.5", "bare engine p99, paired"),
        row("bridge+Serve end-to-end p50", e2e, e2e_bare, 0.5, "ratio <= 1.5", paired),
        row("bridge+Serve end-to-end p99", e2e, e2e_bare, 0.99, "ratio <= 2.0", "bare engine p99, paired"),
        added("bridge+Serve overhead p50 (added ms; target <= 5)", e2e, e2e_bare, 0.5, paired),
        added("bridge+Serve overhead p99 (added ms; target <= 15)", e2e, e2e_bare, 0.99, "bare engine p99, paired"),
        added("Serve handle overhead p50 (added ms; target <= 2)", serve_lat, serve_bare, 0.5, paired),
        added(
            "HTTP route, whole answer, overhead p50 (added ms; request and answer on Kafka)",
            http_lat,
            http_bare,
            0.5,
            paired,
        ),
        row(
            "HTTP route, streamed: time to first content chunk p50",
            http_ttfb,
            http_bare_ttft,
            0.5,
            "(informational)",
            "bare engine time to first token p50, paired",
        ),
        row("hop: Serve handle call, no work (Router.routing) p50", noop, serve_bare, 0.5, "(informational)", paired),
        row(
            "hop: Kafka round trip through the bridge, no model p50",
            kafka_rt,
            e2e_bare,
            0.5,
            "(informational)",
            paired,
        ),
        row(
            "bare engine p50 before the broker and Ray started (the machine's drift)",
            bare,
            e2e_bare,
            0.5,
            "(informational)",
            "the same, paired with bridge+Serve",
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
