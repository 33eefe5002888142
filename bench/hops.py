"""Where the inference path's time goes, hop by hop, without the model (docs/inference.md).

Kafka, on a broker as the local stack runs it (SASL_SSL, SCRAM, ACL authorizer), sequential
round trips after a warm-up:

- the floor: one aiokafka produce (``acks=all``, idempotent, no linger, what every Argus
  producer uses) until the broker acknowledges it, and until a consumer has it;
- the bridge's round trip with a router that answers at once, cut where the clocks allow:
  request produced -> the bridge calls the router (broker, fetch, decode, validate,
  dispatch); the router's answer -> the response record's timestamp (the bridge's own
  work: the answer record, encoding, the send); the response's timestamp -> the reader has
  it (broker, fetch). The response's timestamp is the broker record's (milliseconds).

Ray Serve, a deployment that does nothing, called from the driver (what the bridge does)
and through a second deployment (what the Router does to a model replica), in the same
application and in an application of its own found by name (what the Router does: one
application per model version), in two processes: Ray Serve's defaults, and
``serve_low_latency`` (user code and handle routers on the replica's loop, gRPC between
deployments, the bridge's handle router on its loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Result, pct

REPO = Path(__file__).resolve().parents[1]


def run(n: int = 200, warmup: int = 30) -> list[Result]:
    kafka = _kafka(n, warmup)
    default = _serve_child("default", n, warmup)
    fast = _serve_child("low-latency", n, warmup)
    floor = pct(kafka["produce_consumed"], 0.5)

    def k(figure: str, key: str, q: float = 0.5) -> Result:
        return Result(
            "hops",
            figure,
            pct(kafka[key], q),
            "one produce until consumed (aiokafka alone)",
            floor,
            "ms",
            "(informational)",
            False,
        )

    def s(figure: str, key: str, base: str = "Ray Serve defaults", base_key: str = "", target: str = "ratio <= 0.75"):  # noqa: ANN202
        baseline = fast[base_key] if base_key else default[key]  # the defaults' run of the same call unless named
        return Result("hops", figure, pct(fast[key], 0.5), base, pct(baseline, 0.5), "ms", target, False)

    return [
        k("Kafka: produce until acknowledged (acks=all) p50", "produce_ack"),
        k("bridge: request produced -> router called p50", "to_bridge"),
        k("bridge: router answered -> response record written p50", "bridge_work"),
        k("bridge: response written -> reader has it p50", "to_reader"),
        k("bridge: round trip, no model p50", "round_trip"),
        k("bridge: round trip, no model p99", "round_trip", 0.99),
        s("Serve: driver -> replica, no-op call p50 (serve_low_latency)", "noop"),
        s("Serve: driver -> replica -> replica, no-op p50 (serve_low_latency)", "chain"),
        s(
            "Serve: driver -> replica -> replica of another application, no-op p50 (serve_low_latency)",
            "chain_apps",
            "the same, both in one application",
            "chain",
            "ratio <= 1.25",
        ),
    ]


# -- Kafka ----------------------------------------------------------------------------------
def _kafka(n: int, warmup: int) -> dict[str, list[float]]:
    from services.stack.kafka_local import KafkaLocal, free_port

    home = Path(tempfile.mkdtemp(prefix="argus-bench-hops-"))
    kafka = KafkaLocal(home=home, port=free_port(), controller_port=free_port(), libs_dir=REPO / ".argus/kafka/libs")
    kafka.start()
    try:
        return asyncio.run(_kafka_measure(kafka.client_settings(topic_prefix="bench."), n, warmup))
    finally:
        kafka.stop()


async def _kafka_measure(kafka: Any, n: int, warmup: int) -> dict[str, list[float]]:
    from aiokafka import TopicPartition

    from bench.bridge_overhead import _InstantRouter
    from services.common.kafka import ensure_topics, make_consumer, make_producer
    from services.common.registry import get_codec
    from services.inference.bridge import InferenceBridge
    from services.inference.settings import BridgeSettings, InferenceSettings
    from services.sdk.producer import ArgusProducer

    await ensure_topics(kafka)
    out: dict[str, list[float]] = {
        k: [] for k in ("produce_ack", "produce_consumed", "to_bridge", "bridge_work", "to_reader", "round_trip")
    }
    called: dict[str, float] = {}

    class Router:
        class _Infer:
            async def remote(self, request: dict[str, Any]) -> dict[str, Any]:
                answer = await _InstantRouter.infer.remote(request)
                called[str(request["request_id"])] = time.time()
                return answer

        infer = _Infer()

    consumer = make_consumer(kafka, None)
    await consumer.start()

    async def first(tps: list[TopicPartition], want: Any) -> Any:
        while True:
            for msgs in (await consumer.getmany(*tps, timeout_ms=50)).values():
                for m in msgs:
                    if want(m):
                        return m

    # the floor: aiokafka alone, on the responses topic's partition 0
    raw = kafka.topic("inference-shadow-responses")
    raw_tp = TopicPartition(raw, 0)
    consumer.assign([raw_tp])
    await consumer.seek_to_end(raw_tp)
    producer = make_producer(kafka, linger_ms=0)
    await producer.start()
    try:
        for i in range(warmup + n):
            body = f"{i}".encode()
            t = time.perf_counter()
            await producer.send_and_wait(raw, body, partition=0)
            acked = time.perf_counter()
            await first([raw_tp], lambda m, body=body: m.value == body)
            if i >= warmup:
                out["produce_ack"].append((acked - t) * 1000)
                out["produce_consumed"].append((time.perf_counter() - t) * 1000)
    finally:
        await producer.stop()

    settings = InferenceSettings(
        kafka=kafka,
        allow_unsigned_models=True,  # no model is served: the bench measures the path
        bridge=BridgeSettings(group_id="bench-hops", max_in_flight=8),
    )
    bridge = InferenceBridge(settings, Router())
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    name = kafka.topic("inference-responses")
    tps = [TopicPartition(name, p) for p in range(3)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    codec = get_codec("inference-responses")
    try:
        async with ArgusProducer(kafka, linger_ms=0) as argus:
            for i in range(warmup + n):
                record = argus.build_request([{"role": "user", "content": "ping"}], tenant="bench", user=f"u{i}")
                rid = str(record["request_id"])
                t_wall, t = time.time(), time.perf_counter()
                await argus.send_record(record, wait=True)
                m = await first(tps, lambda m, rid=rid: str(codec.decode(m.value)["request_id"]) == rid)
                got_wall, got = time.time(), time.perf_counter()
                if i >= warmup:
                    out["round_trip"].append((got - t) * 1000)
                    out["to_bridge"].append((called[rid] - t_wall) * 1000)
                    out["bridge_work"].append(m.timestamp - called[rid] * 1000)
                    out["to_reader"].append(got_wall * 1000 - m.timestamp)
    finally:
        await consumer.stop()
        stop.set()
        await task
    return out


# -- Ray Serve ---------------------------------------------------------------------------------
def _serve_child(mode: str, n: int, warmup: int) -> dict[str, list[float]]:
    """Each mode in a process of its own: Ray Serve reads these settings when it is imported."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.hops", "--serve", mode, str(n), str(warmup)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the Serve measurement ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _serve_measure(mode: str, n: int, warmup: int) -> dict[str, list[float]]:
    from services.inference.serveconfig import LOW_LATENCY_CALLER_ENV, LOW_LATENCY_REPLICA_ENV

    fast = mode == "low-latency"
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if fast:
        os.environ.update(LOW_LATENCY_CALLER_ENV)
    import ray
    from ray import serve
    from ray.serve.handle import DeploymentHandle

    from services.common.logging import get_logger
    from services.inference.bridge import current_loop_handle

    actor: dict[str, Any] = {"num_cpus": 0}
    if fast:  # what serve_config's application runtime_env gives every replica
        actor["runtime_env"] = {"env_vars": dict(LOW_LATENCY_REPLICA_ENV)}
    options: dict[str, Any] = {"max_ongoing_requests": 8, "ray_actor_options": actor}

    @serve.deployment(**options)
    class Leaf:
        async def call(self, x: Any) -> Any:
            return x

    @serve.deployment(**options)
    class Front:
        def __init__(self, leaf: DeploymentHandle) -> None:
            self.leaf = leaf
            self.other: DeploymentHandle | None = None

        async def noop(self, x: Any) -> Any:
            return x

        async def chain(self, x: Any) -> Any:
            return await self.leaf.call.remote(x)

        async def chain_apps(self, x: Any) -> Any:  # the Router's way to a model version's replicas
            if self.other is None:
                self.other = serve.get_deployment_handle("Leaf", app_name="hops-leaf")
            return await self.other.call.remote(x)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    serve.run(Leaf.bind(), name="hops-leaf", route_prefix=None)
    serve.run(Front.bind(Leaf.bind()), name="hops", route_prefix=None)
    payload = {"request_id": "r", "tenant": "bench", "messages": [{"role": "user", "content": "x" * 200}]}

    async def measure() -> dict[str, list[float]]:
        handle = serve.get_app_handle("hops")
        if fast:
            handle = current_loop_handle(handle, get_logger("bench.hops"))
        out: dict[str, list[float]] = {}
        for method in ("noop", "chain", "chain_apps"):
            call = getattr(handle, method)
            lat = []
            for i in range(warmup + n):
                t = time.perf_counter()
                await call.remote(payload)
                if i >= warmup:
                    lat.append((time.perf_counter() - t) * 1000)
            out[method] = lat
        return out

    try:
        return asyncio.run(measure())
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        print(json.dumps(_serve_measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        raise SystemExit("usage: python -m bench.run hops")
