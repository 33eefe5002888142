"""The drift service as a faust-streaming application.

    requests / responses / feedback topics
        -> extract (decode, features; invalid -> dead-letter topic)
        -> <app id>-features (internal topic keyed by model|version: one stream in order per key)
        -> detect (StreamMonitor per key; state checkpointed in a faust table backed by a
           changelog topic) -> DriftEvents on argus.drift.events

State: each stream's monitor is written to the ``drift-state`` table (changelog-backed) as
a versioned JSON document (:mod:`services.drift.state`; never pickle)
every ``checkpoint_every`` events and immediately after any alarm, so a restarted or
rebalanced worker resumes with the detectors' windows and references (no re-warm-up)
and with the alarm already raised (no second event for the same change). DriftEvent
ids are derived from the change, so a replay is idempotent downstream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import faust

from services.common.codec import SerializationError
from services.common.faust_support import DeadLetterWriter, faust_readiness, heartbeat, make_app, report_lag
from services.common.health import HealthServer, Readiness
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import get_codec
from services.drift.calibration import load as load_calibration
from services.drift.detect import CONTROL_RESET, DriftDetector
from services.drift.fairness import FairnessConfig, SegmentJoin
from services.drift.features import FeedbackAttribution, request_features, response_features
from services.drift.settings import DriftSettings


class DriftWiring:
    """What the agents call, kept on the app (``app.argus_drift``) so tests can drive the
    agents with ``agent.test_context()`` and swap the outputs for collectors."""

    def __init__(
        self, detector: DriftDetector, dlq: Any, send_feature: Any, send_event: Any, attribution: FeedbackAttribution
    ) -> None:
        self.attribution = attribution  # feedback -> the model and version of the response it judges
        self.detector = detector  # the detection logic (a plain class over the state table)
        self.dlq = dlq  # DeadLetterWriter: send(event, reason), valid(event)
        self.send_feature = send_feature  # (key, value) -> the internal features topic
        self.send_event = send_event  # (key, value) -> argus.drift.events, acknowledged


def create_app(settings: DriftSettings) -> faust.App:
    k = settings.kafka
    log = get_logger("argus.drift")
    app = make_app(settings.app_id, k, settings.partitions, settings.broker_session_timeout_s)
    calibration = load_calibration() | {"rate_sides": dict(settings.rate_sides)}
    codecs = {key: get_codec(key) for key in ("inference-requests", "inference-responses", "feedback")}
    drift_codec = get_codec("drift-events")
    topics = {key: app.topic(k.topic(key), key_type=bytes, value_type=bytes) for key in codecs}
    features_topic = app.topic(
        f"{k.topic_prefix}{settings.app_id}-features",
        internal=True,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
    )
    drift_topic = app.topic(k.topic("drift-events"), key_type=bytes, value_type=bytes)
    # bytes keys and values: faust then uses the raw serializer for the changelog too
    state = app.Table("drift-state", default=None, partitions=settings.partitions, key_type=bytes, value_type=bytes)
    sink = {"healthy": True}  # last DriftEvent write to the broker succeeded

    metrics = Metrics(settings.service_name)
    dlq = DeadLetterWriter(app, k, "drift", settings.app_id, metrics)

    extract_hooks: dict[str, Any] = {}  # topic key -> called with each decoded record (semantic sampling)

    async def send_feature(key: bytes, value: bytes) -> None:
        await features_topic.send(key=key, value=value)

    async def send_event(key: bytes, value: bytes) -> None:
        await (await drift_topic.send(key=key, value=value))

    fairness_config = FairnessConfig(
        dimensions=settings.fairness.dimensions,
        window=settings.fairness.window,
        evaluate_every=settings.fairness.evaluate_every,
        fdr=settings.fairness.fdr,
        min_segment=settings.fairness.min_segment,
        min_ratio=settings.fairness.min_ratio,
        min_difference=settings.fairness.min_difference,
        min_effect=settings.fairness.min_effect,
    )
    detector = DriftDetector(
        state, calibration, settings.semantic, settings.checkpoint_every, metrics, log, fairness=fairness_config
    )
    wiring = DriftWiring(detector, dlq, send_feature, send_event, FeedbackAttribution(settings.feedback_join_size))
    app.argus_drift = wiring

    def make_extractor(key: str, extract):  # noqa: ANN001, ANN202
        async def extractor(stream: Any) -> None:
            topic_name = k.topic(key)
            async for event in stream.events():
                metrics.inc("argus_messages_consumed_total", topic=topic_name)
                try:
                    record = codecs[key].decode(event.value)
                except SerializationError as exc:
                    await wiring.dlq.send(event, str(exc))
                    continue
                wiring.dlq.valid(event)
                if key in extract_hooks:
                    extract_hooks[key](record)
                f = extract(record)
                if f is not None:
                    await wiring.send_feature(f.stream.encode(), json.dumps(dataclasses.asdict(f)).encode())
                while fairness_out:  # the answer's outcomes with its request's segments, to the model's stream
                    stream_key, payload = fairness_out.pop(0)
                    await wiring.send_feature(stream_key.encode(), json.dumps(payload).encode())

        extractor.__name__ = f"extract_{key.replace('-', '_')}"
        return app.agent(topics[key], name=f"{settings.app_id}.extract.{key}")(extractor)

    fair = settings.fairness
    join = SegmentJoin(fair.dimensions, fair.join_size) if fair.enabled else None
    fairness_out: list[tuple[str, dict[str, Any]]] = []  # filled by the response extractor, sent right after

    def requests(record: dict[str, Any]) -> Any:
        if join is not None:
            early = join.remember(record)  # an answer that arrived before its request
            if early is not None:
                fairness_out.append(early)
        return request_features(record)

    make_extractor("inference-requests", requests)

    def responses(record: dict[str, Any]) -> Any:
        wiring.attribution.remember(record)
        if join is not None:
            misses = join.misses
            obs = join.observation(record)
            if obs is not None:
                fairness_out.append(obs)
            if join.misses > misses:
                metrics.inc("argus_fairness_unjoined_total")
        return response_features(record)

    def feedback(record: dict[str, Any]) -> Any:
        misses = wiring.attribution.misses
        f = wiring.attribution.features(record)
        if wiring.attribution.misses > misses:
            metrics.inc("argus_drift_feedback_unattributed_total")
        return f

    make_extractor("inference-responses", responses)
    make_extractor("feedback", feedback)

    if settings.semantic.enabled:
        from services.drift.embeddings import PromptEmbedder, TokenBucket, pack

        sem = settings.semantic
        embedder = PromptEmbedder()  # loaded at start-up: a missing model fails the worker now, not later
        bucket = TokenBucket(sem.max_per_s, burst=max(sem.batch, sem.max_per_s))
        pending: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(maxsize=sem.queue)

        def sample_prompt(record: dict[str, Any]) -> None:
            """Called by the request extractor: a rate-limited sample of prompts is queued
            for embedding; the rest are counted as skipped (the queue never blocks the
            stream, so embedding cannot hold back offsets or the numeric features)."""
            if pending.full() or not bucket.take(1):
                metrics.inc("argus_drift_embeddings_total", outcome="skipped")
                return
            user = [m["content"] for m in record["messages"] if m["role"] == "user"]
            pending.put_nowait((f"{record['model']}|*", str(record["request_id"]), user[-1] if user else ""))

        extract_hooks["inference-requests"] = sample_prompt

        @app.task
        async def embed_prompts() -> None:
            """Sampled prompts -> embeddings (in batches, off the event loop) -> the
            stream's MMD test, through the features topic like every other feature."""
            while True:
                batch = [await pending.get()]
                deadline = time.monotonic() + 0.5
                while len(batch) < sem.batch and (left := deadline - time.monotonic()) > 0:
                    try:
                        batch.append(await asyncio.wait_for(pending.get(), left))
                    except asyncio.TimeoutError:
                        break
                vectors = await asyncio.to_thread(embedder.embed, [text for _, _, text in batch])
                for (stream_key, request_id, _), vec in zip(batch, vectors):
                    await wiring.send_feature(
                        stream_key.encode(), json.dumps({"embedding": pack(vec), "request_id": request_id}).encode()
                    )
                metrics.inc("argus_drift_embeddings_total", len(batch), outcome="embedded")

    @app.agent(features_topic, name=f"{settings.app_id}.detect")
    async def detect(stream: Any) -> None:
        async for key, value in stream.items():
            for event in wiring.detector.handle(key.decode(), value):
                try:
                    await wiring.send_event(key, drift_codec.encode(event))
                except Exception:  # recorded for readiness, then re-raised: faust restarts the agent, nothing is acked
                    sink["healthy"] = False
                    raise
                sink["healthy"] = True
                metrics.inc("argus_messages_produced_total", topic=drift_topic.get_topic_name())

    # Health: liveness = faust's event loop advances (a 1 s timer), readiness = not
    # rebalancing and the table recovered; metrics in Prometheus format.
    progress = heartbeat(app)
    lag = report_lag(app, k, metrics)

    async def readiness() -> Readiness:
        return faust_readiness(app, settings.service_name, sink["healthy"], "DriftEvent writes failing", lag=lag)

    health = HealthServer(settings.health, metrics, lambda: progress["t"], readiness)

    if settings.health_enabled:

        @app.task
        async def serve_health() -> None:
            port = await health.start()
            log.info("drift.health", port=port)

    app.argus_features_topic = features_topic  # for the reset command
    app.argus_internal_topics = {features_topic.get_topic_name(): settings.partitions}
    return app


async def request_reference_reset(app: faust.App, stream_key: str) -> None:
    """Ask the worker owning ``stream_key`` (``model|version``) to pin a new reference."""
    await app.argus_features_topic.send(key=stream_key.encode(), value=json.dumps({"control": CONTROL_RESET}).encode())
