"""Alert latency: from the breaching event being produced to the webhook being received,
beyond ``group_wait``, on the real broker, with background traffic.

- Argus: the alerting worker (faust, its own process) with one error-rate rule; each
  probe is one failed response for a new model (a new alert and a new group), timed
  from just before it is produced until the subscriber (the project's webhook receiver,
  checking the signature) has it; ``group_wait`` is subtracted.
- Baseline, same run, same broker and background traffic: a raw pipe, i.e. an aiokafka
  consumer that posts every probe it reads straight to the same receiver (no decoding,
  no rules, no grouping): the transport's own latency.

Target: p99 <= 500 ms beyond group_wait.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from bench.common import Result, pct

REPO = Path(__file__).resolve().parents[1]
GROUP_WAIT = 0.5
SECRET = "bench-secret"
API_TOKEN = "bench-alerting-api-token"


def _response(model: str, error: bool) -> dict:
    return {
        "request_id": str(uuid.uuid4()),
        "response_id": str(uuid.uuid4()),
        "model": model,
        "response_model": model,
        "model_version": "v1",
        "tenant": "bench",
        "output": None if error else "ok",
        "finish_reason": "error" if error else "stop",
        "input_tokens": 20,
        "output_tokens": 30,
        "latency_ms": 150.0,
        "status": "error" if error else "ok",
        "served_at": int(time.time() * 1000),
    }


def run(probes: int = 60, background_rate: int = 300) -> list[Result]:
    from services.stack.kafka_local import KafkaLocal, free_port

    home = Path(tempfile.mkdtemp(prefix="argus-bench-alerting-"))
    kafka = KafkaLocal(home=home, port=free_port(), controller_port=free_port(), libs_dir=REPO / ".argus/kafka/libs")
    kafka.start()
    try:
        return asyncio.run(_run(kafka.client_settings(topic_prefix="bench."), home, probes, background_rate))
    finally:
        kafka.stop()


async def _run(kafka, home: Path, probes: int, background_rate: int) -> list[Result]:  # noqa: ANN001
    import httpx
    from aiokafka import TopicPartition

    from services.alerting.receiver import WebhookReceiver
    from services.common.kafka import ensure_topics, make_consumer, make_producer
    from services.common.registry import get_codec
    from services.stack.kafka_local import free_port

    await ensure_topics(kafka)
    receiver = await WebhookReceiver(port=free_port(), secret=SECRET.encode()).start()
    config = home / "alerting.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "ErrorRate",
                        "source": "responses",
                        "metric": "error_rate",
                        "by": ["model"],
                        "window": "60s",
                        "threshold": 0.5,
                        "min_events": 1,
                        "severity": "critical",
                    }
                ],
                "route": {
                    "receiver": "hook",
                    "group_by": ["alertname", "model"],
                    "group_wait": f"{GROUP_WAIT}s",
                    "group_interval": "5m",
                    "repeat_interval": "4h",
                },
                "receivers": [{"name": "hook", "webhook_configs": [{"url": receiver.url, "secret": "hook"}]}],
            }
        )
    )
    health = free_port()
    env = {
        **os.environ,
        **kafka.as_env("ARGUS_ALERTING_"),
        "ARGUS_ALERTING_CONFIG_FILE": str(config),
        "ARGUS_ALERTING_WEBHOOK_SECRETS": json.dumps({"hook": SECRET}),
        "ARGUS_ALERTING_API_TOKEN": API_TOKEN,
        "ARGUS_ALERTING_HEALTH__PORT": str(health),
        "ARGUS_ALERTING_LOG_LEVEL": "WARNING",
        "ARGUS_ALERTING_APP_ID": "bench-alerting",
        "ARGUS_ALERTING_BROKER_SESSION_TIMEOUT_S": "6",
    }
    log = open(home / "alerting.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.alerting"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    codec = get_codec("inference-responses")
    topic = kafka.topic("inference-responses")
    producer = make_producer(kafka, linger_ms=0)
    await producer.start()
    stop = asyncio.Event()

    async def background() -> None:
        i = 0
        t0 = time.monotonic()
        while not stop.is_set():
            i += 1
            r = _response(f"steady-{i % 4}", error=False)
            await producer.send(topic, codec.encode(r), key=r["request_id"].encode())
            delay = t0 + i / background_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def wait_for(predicate, timeout_s: float) -> bool:  # noqa: ANN001
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.002)
        return False

    def received(model: str) -> float | None:
        """When the receiver got ``model``'s alert: from the worker (groupLabels carry the
        alertname) for Argus probes, from the pipe (no alertname) for raw probes."""
        from_worker = not model.startswith("raw-")
        for r in receiver.delivered():
            g = r["json"]["groupLabels"] if r["json"] else {}
            if g.get("model") == model and ("alertname" in g) == from_worker:
                return r["at"]
        return None

    async def probe(model: str) -> float:
        t0 = time.time()
        r = _response(model, error=True)
        await producer.send_and_wait(topic, codec.encode(r), key=r["request_id"].encode())
        if not await wait_for(lambda: received(model) is not None, 30):
            raise RuntimeError(f"no webhook for {model} within 30 s (see {home / 'alerting.log'})")
        return received(model) - t0  # type: ignore[operator]

    try:
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if (await client.get(f"http://127.0.0.1:{health}/api/v2/alerts", headers=auth)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        bg = asyncio.create_task(background())
        for i in range(3):  # warm-up: connections, first group
            await probe(f"warmup-{i}")
        argus = []
        for i in range(probes):
            argus.append(await probe(f"probe-{i}") - GROUP_WAIT)
            await asyncio.sleep(0.1)

        # the raw pipe: consume, and post each probe to the receiver as it is read
        consumer = make_consumer(kafka, None)
        await consumer.start()
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [0, 1, 2])]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)

        async def pipe() -> None:
            async with httpx.AsyncClient() as client:
                while not stop.is_set():
                    for msgs in (await consumer.getmany(timeout_ms=100)).values():
                        for m in msgs:
                            rec = codec.decode_plain(m.value)
                            if rec["model"].startswith("raw-"):
                                body = json.dumps({"groupLabels": {"model": rec["model"]}, "alerts": []}).encode()
                                await client.post(
                                    receiver.url,
                                    content=body,
                                    headers={"Idempotency-Key": rec["request_id"], **_signed(body)},
                                )

        pipe_task = asyncio.create_task(pipe())
        raw = []
        for i in range(probes):
            raw.append(await probe(f"raw-{i}"))
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(bg, pipe_task)
        await consumer.stop()
    finally:
        stop.set()
        await producer.stop()
        worker.terminate()
        worker.wait(60)
        await receiver.stop()
    ms = lambda xs: [x * 1000 for x in xs]  # noqa: E731
    a, b = ms(argus), ms(raw)
    note = f"{probes} alerts, {background_rate} events/s background"
    return [
        Result(
            "alerting",
            f"breach produced -> webhook received, beyond group_wait, p50 ({note})",
            pct(a, 0.5),
            "raw pipe: consume + POST, p50",
            pct(b, 0.5),
            "ms",
            "(informational)",
            higher_is_better=False,
        ),
        Result(
            "alerting",
            f"breach produced -> webhook received, beyond group_wait, p99 ({note})",
            pct(a, 0.99),
            "raw pipe: consume + POST, p99",
            pct(b, 0.99),
            "ms",
            "p99 <= 500 ms",
            higher_is_better=False,
        ),
    ]


def _signed(body: bytes) -> dict[str, str]:
    from services.common.webhook import sign

    ts = str(int(time.time()))
    return {"X-Argus-Timestamp": ts, "X-Argus-Signature": sign(SECRET.encode(), ts, body)}


if __name__ == "__main__":
    for r in run():
        print(r)
