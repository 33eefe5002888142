"""The drift app's agents, driven with faust's ``agent.test_context()`` (no broker): a
record in, its features out (per model and version), undecodable records dead-lettered;
the detect agent turns a shifted feature stream into DriftEvents on the events output."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import numpy as np

from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import default_registry, get_codec
from services.drift.app import create_app
from services.drift.calibration import load
from services.drift.detect import DriftDetector
from services.drift.features import Features
from services.drift.settings import DriftSettings

REG = default_registry()
SETTINGS = DriftSettings(health_enabled=False)


class Collect:
    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes]] = []
        self.dead: list[str] = []
        self.valid_count = 0

    async def send(self, key: Any, value: Any = None) -> None:  # as send_feature / send_event
        self.items.append((key, value))

    async def dead_letter(self, event: Any, reason: str, error_type: str = "") -> None:
        self.dead.append(reason)

    def valid(self, event: Any) -> None:
        self.valid_count += 1


def app_with_collectors():  # noqa: ANN201 - (app, features, events, dead letters)
    app = create_app(SETTINGS)
    features, events, dlq = Collect(), Collect(), Collect()
    app.argus_drift.send_feature = features.send
    app.argus_drift.send_event = events.send
    dlq.send = dlq.dead_letter  # the writer's interface: send(event, reason), valid(event)
    app.argus_drift.dlq = dlq
    return app, features, events, dlq


async def test_a_response_becomes_features_of_its_model_and_version() -> None:
    app, features, _, dlq = app_with_collectors()
    (_, response), *_ = REG.examples("inference-responses")[1]
    response = response | {"model": "m1", "model_version": "v3", "status": "ok"}
    async with app.agents["argus-drift.extract.inference-responses"].test_context() as agent:
        await agent.put(key=b"r", value=get_codec("inference-responses").encode(response))
        await agent.put(key=b"r", value=b"\x00garbage")
    ((key, value),) = features.items
    assert key == b"m1|v3" and json.loads(value)["stream"] == "m1|v3"
    assert "latency_ms" in json.loads(value)["numeric"]
    assert len(dlq.dead) == 1 and dlq.valid_count == 1


async def test_the_detect_agent_emits_drift_events_for_a_shift() -> None:
    app, _, events, _ = app_with_collectors()
    table: dict = {}
    app.argus_drift.detector = DriftDetector(
        table, load(), SETTINGS.semantic, SETTINGS.checkpoint_every, Metrics("t"), get_logger("t")
    )
    rng = np.random.default_rng(5)
    xs = np.concatenate([rng.lognormal(3.5, 0.5, 1500), rng.lognormal(4.5, 0.5, 600)])
    async with app.agents["argus-drift.detect"].test_context() as agent:
        for i, x in enumerate(xs):
            f = Features("m|v1", numeric={"latency_ms": float(x)}, request_id=f"r{i}")
            await agent.put(key=b"m|v1", value=json.dumps(dataclasses.asdict(f)).encode())
    assert events.items and all(k == b"m|v1" for k, _ in events.items)
    decoded = [get_codec("drift-events").decode(v) for _, v in events.items]
    assert {(e["model"], e["model_version"]) for e in decoded} == {("m", "v1")}
    assert table  # the monitor's state was checkpointed into the table


async def test_feedback_is_judged_against_the_model_and_version_that_answered() -> None:
    app, features, _, _ = app_with_collectors()
    (_, response), *_ = REG.examples("inference-responses")[1]
    (_, feedback), *_ = REG.examples("feedback")[1]
    a, b, unknown = (str(uuid.uuid4()) for _ in range(3))
    async with app.agents["argus-drift.extract.inference-responses"].test_context() as agent:
        for rid, model, version in ((a, "m1", "v1"), (b, "m2", "v9")):
            r = response | {"request_id": rid, "model": model, "model_version": version, "shadow": False}
            await agent.put(key=rid.encode(), value=get_codec("inference-responses").encode(r))
    features.items.clear()
    async with app.agents["argus-drift.extract.feedback"].test_context() as agent:
        for rid in (b, a, unknown):
            fb = feedback | {"request_id": rid, "kind": "thumbs", "score": 0.0}
            await agent.put(key=rid.encode(), value=get_codec("feedback").encode(fb))
    streams = [json.loads(v)["stream"] for _, v in features.items]
    assert streams == ["m2|v9", "m1|v1"]  # never "*|*"; the unknown one is counted, not guessed
    assert app.argus_drift.attribution.misses == 1
    assert all(json.loads(v)["binary"] == {"negative_feedback": True} for _, v in features.items)


def test_the_join_window_is_bounded_and_shadows_do_not_answer() -> None:
    from services.drift.features import FeedbackAttribution

    att = FeedbackAttribution(size=2)
    for rid in ("a", "b", "c"):
        att.remember({"request_id": rid, "model": "m", "model_version": "v1", "shadow": False})
    att.remember({"request_id": "c", "model": "m", "model_version": "v2", "shadow": True})
    fb = {"kind": "thumbs", "score": 1.0}
    assert att.features(fb | {"request_id": "a"}) is None and att.misses == 1  # fell out of the window
    assert att.features(fb | {"request_id": "c"}).stream == "m|v1"
    assert att.features({"kind": "comment", "score": None, "request_id": "zzz"}) is None and att.misses == 1
