"""The drift service's detection logic without faust: features payloads in, DriftEvent
records out, the monitor checkpointed to (and restored from) its table."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import get_codec
from services.drift.calibration import load
from services.drift.detect import CONTROL_RESET, DriftDetector
from services.drift.features import Features
from services.drift.settings import DriftSettings


def detector(table: dict) -> DriftDetector:
    s = DriftSettings()
    return DriftDetector(table, load(), s.semantic, s.checkpoint_every, Metrics("drift"), get_logger("test"))


def features(x: float, request_id: str = "") -> bytes:
    return json.dumps(dataclasses.asdict(Features("m|v1", numeric={"latency_ms": x}, request_id=request_id))).encode()


def test_a_shift_raises_valid_drift_events_and_checkpoints_the_monitor() -> None:
    table: dict = {}
    d = detector(table)
    rng = np.random.default_rng(3)
    events = []
    for i, x in enumerate(np.concatenate([rng.lognormal(3.5, 0.5, 1500), rng.lognormal(4.5, 0.5, 600)])):
        events += d.handle("m|v1", features(float(x), f"r{i}"), now_ms=1764000000000)
    assert events and {e["model"] for e in events} == {"m"} and {e["model_version"] for e in events} == {"v1"}
    codec = get_codec("drift-events")
    for e in events:
        codec.decode(codec.encode(e))  # every event is a valid DriftEvent
    assert (
        b"m|v1" in table
        and d.metrics.value(
            "argus_drift_events_total", feature="latency_ms", detector=events[0]["detector"], status="started"
        )
        >= 1
    )


def test_a_restarted_detector_resumes_from_the_table_without_alarming_again() -> None:
    table: dict = {}
    rng = np.random.default_rng(4)
    first = detector(table)
    for x in rng.lognormal(3.5, 0.5, 1500):
        first.handle("m|v1", features(float(x)))
    raised = []
    for x in rng.lognormal(4.5, 0.5, 600):
        raised += first.handle("m|v1", features(float(x)))
    assert raised
    second = detector(table)  # a restart or a rebalance: the monitor comes back from its checkpoint
    restored = second.monitor_for("m|v1").position
    assert 1500 < restored <= first.monitor_for("m|v1").position  # checkpointed at the alarm, no warm-up again
    again = []
    for x in rng.lognormal(4.5, 0.5, 300):
        again += second.handle("m|v1", features(float(x)))
    assert [e for e in again if e["detector"] == "ks"] == []  # the same change is not raised twice


def test_a_reset_pins_a_new_reference_and_a_bad_checkpoint_starts_afresh() -> None:
    table: dict = {b"m|v1": b"\\x80\\x04 not json"}
    d = detector(table)
    assert d.monitor_for("m|v1").position == 0  # refused, logged, started afresh
    d.handle("m|v1", features(10.0))
    assert d.handle("m|v1", json.dumps({"control": CONTROL_RESET}).encode()) == []
    assert json.loads(table[b"m|v1"])["format"] == "argus.drift.monitor"


def test_one_shift_is_one_ks_event_and_a_later_shift_is_another() -> None:
    """Hysteresis: a +0.5 sigma shift held for 5,000 events gave 4-22 events per run when the
    test re-armed as soon as its statistic dipped under the threshold; it is one now. After
    the stream is back to the reference for a while, the episode ends (an ``ended`` event)
    and a new shift is a new episode."""
    from services.drift.calibration import load as load_calibration
    from services.drift.detectors import WindowKS

    cal = load_calibration()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        ks = WindowKS(cal["detectors"]["ks"]["threshold"], **cal["window"])
        xs = np.concatenate(
            [rng.normal(0, 1, 3000), rng.normal(0.5, 1, 5000), rng.normal(0, 1, 2000), rng.normal(0.8, 1, 2000)]
        )
        out = [(i, a.status) for i, x in enumerate(xs) if (a := ks.update(float(x), "latency_ms", i))]
        alarms = [i for i, status in out if status == "started"]
        ended = [i for i, status in out if status == "ended"]
        assert len(alarms) == 2, (seed, out)
        assert 3000 < alarms[0] < 4000 and 10000 < alarms[1] < 11000, (seed, out)
        # the first episode ended once the stream was back (the second is still open)
        assert len(ended) == 1 and 8000 < ended[0] < 10000, (seed, out)
