"""The drift worker (faust-streaming) on the real broker: a loadgen stream with a
prompt-length drift at a known point, restarts, dead letters."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from services.common.kafka import client_kwargs, make_consumer, make_producer
from services.common.registry import get_codec
from services.common.settings import KafkaSettings
from services.sdk.loadgen import LoadProfile, make_prompt
from services.sdk.producer import ArgusProducer
from tests.conftest import REPO

DOCUMENTED_DELAY = 300  # events after the change, see docs/drift.md


async def send_prompts(kafka: KafkaSettings, n: int, drifted: bool, seed: int, drift: str = "length") -> None:
    rng = random.Random(seed)
    profile = LoadProfile(drift=drift)  # type: ignore[arg-type]
    async with ArgusProducer(kafka) as producer:
        for _ in range(n):
            await producer.request(
                [{"role": "user", "content": make_prompt(profile, rng, drifted)}],
                tenant="acme",
                model="m-drift",
                user=f"u{rng.randrange(50)}",
            )
        await producer.flush()


def start_worker(
    kafka: KafkaSettings, app_id: str, semantic: bool = False, extra: dict[str, str] | None = None
) -> subprocess.Popen:
    env = {
        **os.environ,
        **kafka.as_env("ARGUS_DRIFT_"),
        "ARGUS_DRIFT_APP_ID": app_id,
        "ARGUS_DRIFT_LOG_LEVEL": "WARNING",
        "ARGUS_DRIFT_CHECKPOINT_EVERY": "100",
        # semantic drift (embeddings) has its own test; elsewhere it would only compete for the CPU
        "ARGUS_DRIFT_SEMANTIC__ENABLED": "true" if semantic else "false",
        "ARGUS_DRIFT_SEMANTIC__MAX_PER_S": "1000",
        "ARGUS_DRIFT_SEMANTIC__QUEUE": "1000",  # embed every prompt
        **(extra or {}),
    }
    # output to a file, never an unread pipe: a full pipe would stall the worker
    log = open(f"/tmp/{app_id}-{uuid.uuid4().hex[:4]}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "services.drift"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


async def processed(kafka: KafkaSettings, app_id: str, topic_key: str, timeout_s: float = 120) -> None:
    """Wait until the worker's extract agent committed everything on a topic."""
    name = kafka.topic(topic_key)
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    consumer = make_consumer(kafka, None)
    await consumer.start()
    try:
        tps = [TopicPartition(name, p) for p in range(3)]
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                offsets = await admin.list_consumer_group_offsets(app_id, partitions=tps)
            except KafkaError:  # the group does not exist yet
                offsets = {}
            if offsets and all(offsets.get(tp) and offsets[tp].offset >= ends[tp] for tp in tps):
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"worker did not process {name}: committed {offsets}, ends {ends}")
    finally:
        await consumer.stop()
        await admin.close()


async def drift_events(kafka: KafkaSettings, model: str | None = "m-drift") -> list[dict]:
    codec = get_codec("drift-events")
    consumer = make_consumer(kafka, None)
    await consumer.start()
    try:
        tp = TopicPartition(kafka.topic("drift-events"), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out = []
        while len(out) < end:
            out += [codec.decode(m.value) for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])]
        return [e for e in out if model is None or e["model"] == model]
    finally:
        await consumer.stop()


async def wait_for_events(kafka: KafkaSettings, at_least: int, timeout_s: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = await drift_events(kafka)
        if len(events) >= at_least:
            return events
        await asyncio.sleep(1)
    return await drift_events(kafka)


def position(event: dict) -> int:
    return int(event["detector_params"]["detected_at_position"])


async def test_drift_found_after_the_change_and_state_survives_restarts(kafka_settings: KafkaSettings) -> None:
    app_id = "drift-" + uuid.uuid4().hex[:6]
    baseline = 1500
    await send_prompts(kafka_settings, baseline, drifted=False, seed=1)
    worker = start_worker(kafka_settings, app_id)
    try:
        await processed(kafka_settings, app_id, "inference-requests")
        await asyncio.sleep(4)  # let the table checkpoint reach its changelog
        assert await drift_events(kafka_settings) == [], "false alarm before the change"
        # restart mid-stream: the new worker must not warm up again
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker = start_worker(kafka_settings, app_id)
        await send_prompts(kafka_settings, 600, drifted=True, seed=2)
        events = await wait_for_events(kafka_settings, 2)
        prompt_events = [e for e in events if e["feature"] in ("prompt_chars", "prompt_words")]
        assert prompt_events, f"no drift event for the drifted feature: {events}"
        assert all(baseline - 100 < position(e) for e in events), [(e["feature"], position(e)) for e in events]
        first = min(position(e) for e in prompt_events)
        assert first - baseline <= DOCUMENTED_DELAY + 100, first  # + at most one checkpoint interval lost to SIGKILL
        e = prompt_events[0]
        assert e["reference_summary"]["mean"] < e["current_summary"]["mean"] and e["example_request_ids"]
        await asyncio.sleep(6)  # the monitor is checkpointed right after an alarm; let it reach the changelog
        # restart after the alarm: more drifted traffic is the same change, no second event
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        worker = start_worker(kafka_settings, app_id)
        await send_prompts(kafka_settings, 400, drifted=True, seed=3)
        await asyncio.sleep(30)  # recovery, rebalance and 400 more events (a second event would show up by now)
        after = await drift_events(kafka_settings)
        ks = [x for x in after if x["detector"] == "ks"]
        assert len({x["event_id"] for x in ks}) == len({(x["feature"]) for x in ks}), ks
    finally:
        worker.terminate()
        worker.wait(60)


async def test_malformed_request_is_dead_lettered_and_the_worker_goes_on(kafka_settings: KafkaSettings) -> None:
    app_id = "drift-" + uuid.uuid4().hex[:6]
    producer = make_producer(kafka_settings)
    await producer.start()
    await producer.send_and_wait(kafka_settings.topic("inference-requests"), b"\x01not avro", key=b"bad")
    await producer.stop()
    await send_prompts(kafka_settings, 50, drifted=False, seed=4)
    worker = start_worker(kafka_settings, app_id)
    try:
        await processed(kafka_settings, app_id, "inference-requests")
        codec = get_codec("inference-requests-dlq")
        consumer = make_consumer(kafka_settings, None)
        await consumer.start()
        tp = TopicPartition(kafka_settings.topic("inference-requests-dlq"), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + 30
        letters = []
        while not letters and time.monotonic() < deadline:
            letters = [codec.decode(m.value) for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])]
        await consumer.stop()
        assert letters and "magic byte" in letters[0]["reason"] and letters[0]["service"] == "drift"
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(60)


async def test_two_workers_share_partitions_and_find_what_one_finds(kafka_settings: KafkaSettings) -> None:
    """Three models' streams, drift in two of them; one worker, then two workers of
    another app id on the same input: the same (model, feature) drifts. (Which of a
    feature's detectors owns the episode may differ: a rebalance replays the events
    since the last checkpoint, and the mean CUSUM, which pins its reference after
    2,000 observations, may then be the first to fire instead of the KS test.)"""
    rng = random.Random(9)
    profile = LoadProfile(drift="length")
    async with ArgusProducer(kafka_settings) as producer:
        for phase, n in (("baseline", 1200), ("drift", 500)):
            for _ in range(n):
                for model in ("m-a", "m-b", "m-c"):
                    drifted = phase == "drift" and model != "m-c"
                    await producer.request(
                        [{"role": "user", "content": make_prompt(profile, rng, drifted)}], tenant="acme", model=model
                    )
        await producer.flush()

    async def run(workers: int) -> list[dict]:
        app_id = "drift-" + uuid.uuid4().hex[:6]
        procs = [start_worker(kafka_settings, app_id)]
        for _ in range(workers - 1):
            await asyncio.sleep(8)  # join one at a time, as a scale-out does
            procs.append(start_worker(kafka_settings, app_id))
        try:
            await processed(kafka_settings, app_id, "inference-requests", timeout_s=180)
            await asyncio.sleep(5)
        finally:
            for p in procs:
                p.terminate()
                p.wait(60)
        return await drift_events(kafka_settings, model=None)

    one = await run(1)
    both = (await run(2))[len(one) :]  # the drift topic holds the first run's events first
    found_one = {(e["model"], e["feature"]) for e in one if e["status"] == "started"}
    found_two = {(e["model"], e["feature"]) for e in both if e["status"] == "started"}
    assert {m for m, _ in found_one} == {"m-a", "m-b"}, found_one  # the stable model raised nothing
    assert found_two == found_one, (found_two, found_one)


async def test_semantic_drift_of_prompts_is_found_from_real_embeddings(kafka_settings: KafkaSettings) -> None:
    """Same lengths, same language, another subject: only the prompt embeddings (the
    GGUF model in embedding mode) and the MMD test can tell."""
    app_id = "drift-" + uuid.uuid4().hex[:6]
    await send_prompts(kafka_settings, 300, drifted=False, seed=5, drift="topic")
    worker = start_worker(kafka_settings, app_id, semantic=True)
    try:
        await processed(kafka_settings, app_id, "inference-requests", timeout_s=180)
        await asyncio.sleep(15)  # let the embedding sample catch up
        assert [e for e in await drift_events(kafka_settings) if e["detector"] == "mmd"] == [], "false alarm"
        await send_prompts(kafka_settings, 200, drifted=True, seed=6, drift="topic")
        deadline = time.monotonic() + 150
        mmd: list[dict] = []
        while not mmd and time.monotonic() < deadline:
            await asyncio.sleep(2)
            mmd = [e for e in await drift_events(kafka_settings) if e["detector"] == "mmd"]
        assert mmd, "no semantic drift event"
        e = mmd[0]
        assert e["feature"] == "prompt_embedding" and e["model_version"] == "*"
        assert e["p_value"] <= 1 / 4001 + 1e-12 and e["statistic"] > e["threshold"]
        assert e["change_offset"] > 300 - 50, e["change_offset"]  # located after the change (within half a window)
        assert e["current_summary"]["centroid_shift"] > 0 and e["example_request_ids"]
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(60)


async def test_feedback_drift_names_the_model_and_version_that_got_worse(kafka_settings: KafkaSettings) -> None:
    """Two models answer; feedback about one of them turns negative. The DriftEvent names
    that model and version (feedback joined to the response it judges); the other model,
    whose feedback stays the same, raises nothing."""
    from services.common.registry import default_registry

    app_id = "drift-" + uuid.uuid4().hex[:6]
    codec = get_codec("inference-responses")
    (_, golden), *_ = default_registry().examples("inference-responses")[1]
    rng = random.Random(11)
    n = 1600
    ids = {m: [str(uuid.uuid4()) for _ in range(n)] for m in ("m-a", "m-b")}
    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        for i in range(n):
            for model, version in (("m-a", "v1"), ("m-b", "v2")):
                rid = ids[model][i]
                r = golden | {
                    "request_id": rid,
                    "model": model,
                    "model_version": version,
                    "status": "ok",
                    "shadow": False,
                    "error_type": None,
                    "error_message": None,
                    "latency_ms": rng.lognormvariate(5.0, 0.3),
                    "output_tokens": rng.randint(20, 40),
                }
                await producer.send(kafka_settings.topic("inference-responses"), codec.encode(r), key=rid.encode())
        await producer.flush()
    finally:
        await producer.stop()
    worker = start_worker(kafka_settings, app_id)
    try:
        await processed(kafka_settings, app_id, "inference-responses")
        async with ArgusProducer(kafka_settings) as p:
            for i in range(n):
                for model in ("m-a", "m-b"):
                    worse = model == "m-a" and i >= n * 3 // 4  # after the rate reference is pinned
                    negative = rng.random() < (0.6 if worse else 0.05)
                    await p.feedback(ids[model][i], tenant="acme", kind="thumbs", score=0.0 if negative else 1.0)
            await p.flush()
        await processed(kafka_settings, app_id, "feedback")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = [e for e in await drift_events(kafka_settings, None) if e["feature"] == "negative_feedback"]
            if events:
                break
            await asyncio.sleep(1)
        assert events, "no negative_feedback drift event"
        assert {(e["model"], e["model_version"]) for e in events} == {("m-a", "v1")}, events
        await asyncio.sleep(5)  # anything for m-b (or an unattributed "*") would have shown up by now
        everything = await drift_events(kafka_settings, None)
        assert not [e for e in everything if e["model"] in ("m-b", "*") and e["feature"] == "negative_feedback"]
    finally:
        worker.terminate()
        worker.wait(60)


async def test_a_segment_refused_more_often_raises_one_fairness_event(kafka_settings: KafkaSettings) -> None:
    """Requests carry a locale; from request 1,000 on, one locale's answers are refused at
    10x the others' rate. The worker joins answers with their requests and raises one
    fairness event, for that locale's refusals (a small window here, to keep the test short;
    the defaults are in docs/fairness.md)."""
    app_id = "drift-" + uuid.uuid4().hex[:6]
    codec = get_codec("inference-responses")
    (_, golden), *_ = get_registry_examples()
    rng = random.Random(5)
    n = 2400
    worker = start_worker(
        kafka_settings,
        app_id,
        extra={
            "ARGUS_DRIFT_FAIRNESS__DIMENSIONS": '["locale", "tenant"]',
            "ARGUS_DRIFT_FAIRNESS__WINDOW": "1200",
            "ARGUS_DRIFT_FAIRNESS__EVALUATE_EVERY": "100",
            "ARGUS_DRIFT_FAIRNESS__MIN_SEGMENT": "100",
        },
    )
    try:
        async with ArgusProducer(kafka_settings) as p:
            ids, locales = [], []
            for i in range(n):
                locale = f"l{i % 4}"
                ids.append(
                    await p.request(
                        [{"role": "user", "content": f"question {i}"}],
                        tenant="acme",
                        model="m-fair",
                        metadata={"locale": locale},
                    )
                )
                locales.append(locale)
            await p.flush()
        producer = make_producer(kafka_settings)
        await producer.start()
        try:
            for i, (rid, locale) in enumerate(zip(ids, locales)):
                refused = rng.random() < (0.3 if locale == "l2" and i >= 1000 else 0.03)
                r = golden | {
                    "request_id": rid,
                    "model": "m-fair",
                    "tenant": "acme",
                    "status": "ok",
                    "shadow": False,
                    "finish_reason": "content_filter" if refused else "stop",
                    "latency_ms": rng.lognormvariate(5.0, 0.3),
                    "output_tokens": rng.randint(20, 40),
                }
                await producer.send(kafka_settings.topic("inference-responses"), codec.encode(r), key=rid.encode())
            await producer.flush()
        finally:
            await producer.stop()
        deadline = time.monotonic() + 90
        events: list[dict] = []
        while time.monotonic() < deadline and not events:
            events = [e for e in await drift_events(kafka_settings, "m-fair") if e["detector"].startswith("fairness.")]
            await asyncio.sleep(1)
        assert events, "no fairness event"
        await processed(kafka_settings, app_id, "inference-responses")
        await asyncio.sleep(3)
        started = [  # (the stream's own detectors see the refusal rate rise too: drift, not fairness)
            e
            for e in await drift_events(kafka_settings, "m-fair")
            if e["status"] == "started" and e["detector"].startswith("fairness.")
        ]
        assert [e["feature"] for e in started] == ["fairness.refused[locale=l2]"], started
        (e,) = started
        assert e["detector"] == "fairness.rate" and e["model_version"] == "*" and e["direction"] == "up"
        assert e["current_summary"]["value"] > 3 * e["reference_summary"]["value"]
        assert float(e["detector_params"]["ci95_low"]) > 0 and 1000 < position(e) <= n
    finally:
        worker.terminate()
        worker.wait(60)


def get_registry_examples() -> list:
    from services.common.registry import default_registry

    return default_registry().examples("inference-responses")[1]
