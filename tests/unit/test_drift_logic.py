"""Drift features and detectors without I/O: golden examples through feature
extraction, detectors on synthetic streams with known change points."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.registry import default_registry, get_codec
from services.drift.calibration import load
from services.drift.features import feedback_features, language_of, request_features, response_features, script_of
from services.drift.monitor import StreamMonitor

REG = default_registry()


def decoded(key: str):  # noqa: ANN201
    codec = get_codec(key)
    return [codec.decode(codec.encode(r)) for items in REG.examples(key).values() for _, r in items]


def test_golden_examples_through_feature_extraction() -> None:
    for rec in decoded("inference-requests"):
        f = request_features(rec)
        assert f.stream == "smollm2-135m-instruct|*" and f.numeric["prompt_chars"] > 0
        assert f.categorical["prompt_script"] == "latin"
    by_status = {r["status"]: response_features(r) for r in decoded("inference-responses")}
    assert by_status["ok"].binary == {"error": False, "empty_output": False, "refusal": False}
    assert by_status["deadline_exceeded"].binary["error"] is True
    assert by_status["ok"].numeric["confidence"] < 0
    assert all(response_features(r) is None for r in decoded("inference-shadow-responses"))
    fb = feedback_features(decoded("feedback")[0])
    assert fb.binary == {"negative_feedback": True}


def test_language_and_script() -> None:
    assert language_of("What is the capital of France?") == "en"
    assert language_of("Quelle est la capitale de la France ?") == "fr"
    assert language_of("¿Cuál es la capital de Japón?") == "es"
    assert script_of("Привет мир") == "cyrillic" and script_of("東京は") == "cjk"


def feed(mon: StreamMonitor, values: np.ndarray, feature: str = "x", kind: str = "numeric") -> list:
    from services.drift.features import Features

    out = []
    for v in values:
        f = Features(
            "m|v1",
            numeric={feature: float(v)} if kind == "numeric" else {},
            categorical={feature: str(v)} if kind == "categorical" else {},
            binary={feature: bool(v)} if kind == "binary" else {},
        )
        out += [(mon.position, a) for a in mon.observe(f)]
    return out


@pytest.mark.parametrize("shift", ["mean", "variance"])
def test_numeric_change_is_found_after_it_and_not_before(shift: str) -> None:
    rng = np.random.default_rng(4)
    before = rng.lognormal(3.5, 0.6, 3000)
    after = rng.lognormal(4.3, 0.6, 1500) if shift == "mean" else rng.lognormal(3.5, 1.4, 1500)
    mon = StreamMonitor("m|v1", load())
    alarms = feed(mon, np.concatenate([before, after]))
    assert alarms, "no detection"
    assert all(pos > 3000 for pos, _ in alarms), [(p, a.detector) for p, a in alarms]
    assert min(pos for pos, _ in alarms) - 3000 <= 300


def test_categorical_mix_change_and_one_event_per_episode() -> None:
    rng = np.random.default_rng(5)
    cats = np.array(["en", "fr", "es", "de", "other"])
    before = cats[rng.choice(5, 3000, p=[0.7, 0.1, 0.1, 0.05, 0.05])]
    after = cats[rng.choice(5, 3000, p=[0.3, 0.4, 0.2, 0.05, 0.05])]
    mon = StreamMonitor("m|v1", load())
    alarms = feed(mon, np.concatenate([before, after]), "prompt_language", "categorical")
    assert len(alarms) == 1 and alarms[0][0] > 3000 and alarms[0][1].detector == "chi2"


def test_error_rate_rise_is_found_by_the_bernoulli_detector() -> None:
    rng = np.random.default_rng(6)
    stream = np.concatenate([rng.random(4000) < 0.05, rng.random(2000) < 0.25])
    mon = StreamMonitor("m|v1", load())
    alarms = feed(mon, stream, "error", "binary")
    assert alarms and all(pos > 4000 for pos, _ in alarms)


def test_monitor_state_survives_a_checkpoint_without_rewarming_or_realerting() -> None:
    from services.drift.state import dump_monitor, load_monitor

    rng = np.random.default_rng(7)
    mon = StreamMonitor("m|v1", load())
    feed(mon, rng.lognormal(3.5, 0.6, 2000))
    feed(mon, rng.random(300) < 0.05, "error", "binary")
    feed(mon, rng.choice(["en", "fr"], 700), "lang", "categorical")
    restored = load_monitor(dump_monitor(mon), load())
    assert dump_monitor(restored) == dump_monitor(mon)  # windowed state exact, river detectors replayed
    first = feed(restored, rng.lognormal(4.3, 0.6, 400))
    assert first and min(p for p, _ in first) <= 3000 + 300  # no second warm-up
    again = load_monitor(dump_monitor(restored), load())
    assert [a.detector for _, a in feed(again, rng.lognormal(4.3, 0.6, 400)) if a.detector == "ks"] == []  # same change


def test_semantic_detector_state_round_trips_exactly() -> None:
    from services.drift.settings import SemanticSettings
    from services.drift.state import dump_monitor, load_monitor

    sem = SemanticSettings(reference_size=40, window=20, step=10, permutations=200, dims=4)
    rng = np.random.default_rng(9)
    mon = StreamMonitor("m|*", load())
    for i in range(70):
        mon.observe_embedding(rng.normal(size=12), f"r{i}", sem)
    restored = load_monitor(dump_monitor(mon), load(), sem)
    a, b = mon.detectors["prompt_embedding"][0], restored.detectors["prompt_embedding"][0]
    assert np.array_equal(a.ref_z, b.ref_z) and np.array_equal(a.basis, b.basis) and a.sigma == b.sigma
    assert len(b.current) == len(a.current) and dump_monitor(restored) == dump_monitor(mon)


def test_a_checkpoint_of_a_full_size_semantic_reference_fits_in_one_kafka_message() -> None:
    from services.drift.settings import SemanticSettings
    from services.drift.state import dump_monitor, load_monitor

    sem = SemanticSettings()  # the defaults: 576-dim embeddings, a reference of 200
    rng = np.random.default_rng(10)
    mon = StreamMonitor("m|*", load())
    for i in range(sem.reference_size - 1):  # the largest state: one short of pinning
        mon.observe_embedding(rng.normal(size=576), f"r{i}", sem)
    doc = dump_monitor(mon)
    assert len(doc) < 900_000
    again = load_monitor(doc, load(), sem)
    ref = again.detectors["prompt_embedding"][0].reference
    saved = mon.detectors["prompt_embedding"][0].reference
    assert len(ref) == sem.reference_size - 1 and np.allclose(ref[0], saved[0], rtol=1e-6)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"\x80\x04\x95 pickled bytes", "not a JSON checkpoint"),
        (b'{"format": "argus.drift.monitor", "version": 0}', "format version 0"),
        (b'{"format": "argus.drift.monitor", "version": 1}', "format version 1"),  # river ADWIN/DDM state
        (b"[1, 2]", "not a drift monitor checkpoint"),
        (
            b'{"format": "argus.drift.monitor", "version": 2, "stream": "m|v1", "position": 5, "alarms": 0, "recent_ids": [],'
            b' "detectors": {"x": {"kind": "numeric", "detectors": [{"type": "ks"}]}}}',
            "1 detectors saved, 3 expected",
        ),
        (
            b'{"format": "argus.drift.monitor", "version": 2, "stream": "m|v1", "position": 5, "alarms": 0, "recent_ids": [],'
            b' "detectors": {"x": {"kind": "os.system", "detectors": []}}}',
            "no detectors for kind",
        ),
    ],
)
def test_a_checkpoint_this_version_cannot_read_is_refused_not_guessed(raw: bytes, reason: str) -> None:
    from services.drift.state import StateError, load_monitor

    with pytest.raises((StateError, ValueError), match=reason):
        load_monitor(raw, load())


def test_drift_event_is_a_valid_record_with_a_stable_id() -> None:
    rng = np.random.default_rng(8)
    mon = StreamMonitor("m|v1", load())
    (pos, alarm), *_ = feed(mon, np.concatenate([rng.lognormal(3.5, 0.6, 2000), rng.lognormal(4.5, 0.6, 500)]))
    event = mon.drift_event(alarm, 1764000000000)
    codec = get_codec("drift-events")
    assert codec.decode(codec.encode(event))["feature"] == "x"
    assert mon.drift_event(alarm, 1764000009999)["event_id"] == event["event_id"]


def test_calibration_meets_the_false_alarm_budget() -> None:
    cal = load()
    for name, d in cal["detectors"].items():
        assert d["false_alarms_per_100k"] <= 1.0, (name, d)


def _clusters(seed: int):  # noqa: ANN202
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (5, 576)) * 0.3
    common = rng.normal(0, 1, 576) * 3  # anisotropic, like small-LM embeddings

    def emb(mix):  # noqa: ANN001, ANN202
        return common + centers[rng.choice(5, p=mix)] + rng.normal(0, 0.2, 576)

    return emb


def test_mmd_finds_a_new_embedding_cluster_once_and_not_on_stationary_streams() -> None:
    from services.drift.detectors import WindowMMD

    emb = _clusters(0)
    det = WindowMMD(reference_size=200, window=100, step=50, permutations=500)
    alarms = []
    for i in range(1, 3001):
        mix = [0.4, 0.3, 0.3, 0, 0] if i <= 2000 else [0.3, 0.2, 0.2, 0.3, 0]
        a = det.update(emb(mix), "prompt_embedding", i)
        if a:
            alarms.append(a)
    assert len(alarms) == 1, [(a.position, a.p_value) for a in alarms]
    a = alarms[0]
    assert 2000 - 50 <= a.position <= 2100 and a.p_value <= 1 / 501 and a.statistic > a.threshold
    assert a.current_summary["centroid_shift"] > a.reference_summary["spread"] * 0.05

    emb = _clusters(1)
    det = WindowMMD(reference_size=200, window=100, step=50, permutations=500)
    assert not [i for i in range(3000) if det.update(emb([0.4, 0.3, 0.3, 0, 0]), "prompt_embedding", i)]


def test_embedding_transport_and_rate_limit() -> None:
    import numpy as np

    from services.drift.embeddings import TokenBucket, pack, unpack

    v = np.linspace(-1, 1, 576)
    assert np.allclose(unpack(pack(v)), v, atol=1e-3) and len(pack(v)) < 1600
    b = TokenBucket(rate=10, burst=16)
    assert b.take(100) == 16 and b.take(5) == 0
