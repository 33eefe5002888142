"""Fairness on live traffic (issue 20): the test, its false alarms, its episodes, the
join of answers with their requests, and what alerting and retraining do with a finding."""

from __future__ import annotations

import json
import random

from services.drift.fairness import (
    FairnessConfig,
    FairnessMonitor,
    SegmentJoin,
    benjamini_hochberg,
    outcomes_of,
    script_of,
    segments_of,
)

CONFIG = FairnessConfig(dimensions=("locale",))


def answer(rng: random.Random, refused: float) -> dict:
    return {
        "refused": float(rng.random() < refused),
        "harmful": float(rng.random() < 0.01),
        "error": float(rng.random() < 0.005),
        "deadline_missed": 0.0,
        "output_tokens": float(rng.randint(5, 30)),
        "latency_ms": rng.gauss(400, 60),
        "confidence": rng.gauss(-1.2, 0.3),
    }


def load(seed: int, n: int, onset: int | None = None, segments: int = 10) -> list[tuple[int, dict]]:
    """``n`` answers spread over ``segments`` locales, 2% refused; from ``onset`` on,
    locale l3's requests are refused at 3x that rate."""
    rng = random.Random(seed)
    mon = FairnessMonitor("m", CONFIG)
    events = []
    for i in range(n):
        loc = f"l{rng.randrange(segments)}"
        rate = 0.06 if onset is not None and i >= onset and loc == "l3" else 0.02
        events += [(i, e) for e in mon.observe({"locale": loc}, answer(rng, rate), now_ms=i)]
    return events


def test_benjamini_hochberg() -> None:
    # the textbook step-up: the largest rank k with p_(k) <= q k / m, and everything below it
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    assert benjamini_hochberg(p, 0.05) == [True, True, True, True, False]
    assert benjamini_hochberg(p, 0.03) == [True, False, False, True, False]
    assert benjamini_hochberg(p, 0.01) == [False] * 5
    assert benjamini_hochberg([0.5, 0.9], 0.05) == [False, False]


def test_no_disparity_raises_nothing_over_50000_requests_and_10_segments() -> None:
    assert load(seed=7, n=50_000) == []


def test_a_3x_refusal_disparity_raises_one_episode_for_that_segment() -> None:
    events = load(seed=1003, n=25_000, onset=10_000)
    started = [(i, e) for i, e in events if e["status"] == "started"]
    assert [e["feature"] for _, e in started] == ["fairness.refused[locale=l3]"]
    (i, e), = started  # fmt: skip
    assert 10_000 < i <= 10_000 + 12_000  # docs/fairness.md: detection delay
    assert e["detector"] == "fairness.rate" and e["direction"] == "up" and e["severity"] == "critical"
    p = e["detector_params"]
    assert float(p["ratio"]) >= 1.5 and float(p["ci95_low"]) > 0 and e["p_value"] < 1e-4
    assert e["current_summary"]["value"] > e["reference_summary"]["value"] and e["model_version"] == "*"


def test_the_monitor_resumes_from_its_json_checkpoint() -> None:
    rng = random.Random(3)
    a, b = FairnessMonitor("m", CONFIG), None
    for i in range(3000):
        a.observe({"locale": f"l{i % 4}"}, answer(rng, 0.02 if i % 4 else 0.08), now_ms=i)
    raw = a.dump()
    assert b"pickle" not in raw and json.loads(raw)["version"] == 1
    b = FairnessMonitor.load(raw, CONFIG)
    assert b.position == a.position and len(b.window) == len(a.window)
    found = [(FairnessMonitor.feature(f), round(f.p_value, 12)) for f in a.evaluate()]
    assert found and found == [(FairnessMonitor.feature(f), round(f.p_value, 12)) for f in b.evaluate()]


def test_segments_are_bounded_and_never_personal_data() -> None:
    req = {
        "request_id": "r1",
        "tenant": "acme",
        "messages": [{"role": "user", "content": "Привет, как дела?"}],
        "metadata": {"locale": "ru-RU", "plan": "x" * 500, "region": "bob@example.com"},
    }
    assert segments_of(req, ("tenant", "script", "locale", "plan", "region", "age_band")) == {
        "tenant": "acme",
        "script": "CYRILLIC",
        "locale": "ru-RU",
        "plan": "x" * 64,
        "region": "(redacted)",
    }
    assert script_of("东京在哪里") == "CJK" and script_of("12345 !!") == "NONE"
    mon = FairnessMonitor("m", FairnessConfig(dimensions=("locale",), max_segments=3))
    for i in range(10):
        mon.observe({"locale": f"l{i}"}, {"refused": 0.0})
    assert sorted(mon.sums["locale"]) == ["", "(other)", "l0", "l1", "l2"]


def test_answers_join_their_requests_whichever_comes_first() -> None:
    join = SegmentJoin(("locale",), size=10)
    req = {"request_id": "a", "tenant": "t", "messages": [], "metadata": {"locale": "fr"}}
    resp = {"request_id": "a", "model": "m", "shadow": False, "finish_reason": "content_filter", "status": "ok"}
    assert join.remember(req) is None
    key, payload = join.observation(resp)
    assert key == "m|fairness" and payload["fairness"]["segments"] == {"locale": "fr"}
    assert payload["fairness"]["outcomes"]["refused"] == 1.0
    assert join.observation({**resp, "request_id": "b"}) is None  # waits for its request
    key, late = join.remember({**req, "request_id": "b"})
    assert late["fairness"]["outcomes"]["refused"] == 1.0
    assert join.observation({**resp, "shadow": True}) is None


def test_a_harmful_answer_is_read_from_the_verdict() -> None:
    verdict = {"rails": [{"rail": "output.offensive", "triggered": True}]}
    out = outcomes_of({"status": "ok", "finish_reason": "stop", "guard_verdict": json.dumps(verdict), "latency_ms": 5})
    assert out["harmful"] == 1.0 and out["refused"] == 0.0
    assert outcomes_of({"status": "error", "guard_verdict": "not json"})["harmful"] == 0.0


def test_a_finding_goes_to_fairness_rules_and_policies_not_to_drift_ones() -> None:
    from services.alerting.config import load_config as alert_config
    from services.alerting.engine import AlertEngine
    from services.alerting.settings import DEFAULT_CONFIG
    from services.alerting.signals import drift_signal
    from services.retraining.config import load_config
    from services.retraining.lifecycle import PolicyEngine, TriggerBook

    (_, event), = [x for x in load(seed=1003, n=25_000, onset=10_000) if x[1]["status"] == "started"]  # fmt: skip
    eng = AlertEngine(alert_config(DEFAULT_CONFIG), now=0)
    eng.observe(drift_signal(event, 100.0), 100.0)
    assert [c.alert.labels["alertname"] for c in eng.evaluate(100.0)] == ["FairnessDisparity"]

    policies = load_config(
        {
            "policies": [
                {"name": "drift", "kind": "drift", "min_events": 1},
                {"name": "fair", "kind": "fairness", "min_events": 1},
            ]
        }
    )
    (proposal,) = PolicyEngine(policies, TriggerBook()).on_drift(event, now=100)
    assert proposal.policy.name == "fair" and "fairness event(s)" in proposal.reason


def test_the_report_shows_the_disparity_with_its_interval_and_matches_fairlearn_on_raw_answers() -> None:
    import numpy as np
    from fairlearn.metrics import MetricFrame, equalized_odds_difference, selection_rate

    from services.fairness_report import aggregate, build, html_page

    rng = np.random.default_rng(5)
    n = 20_000
    seg = rng.choice([f"l{i}" for i in range(5)], size=n)
    refused = (rng.random(n) < np.where(seg == "l3", 0.09, 0.03)).astype(float)
    label = np.where(rng.random(n) < 0.3, (rng.random(n) < 0.2).astype(float), np.nan)
    flagged = (rng.random(n) < np.where(label == 1, 0.6, 0.05)).astype(float)
    rows = {
        "segment": seg,
        "refused": refused,
        "flagged": flagged,
        "harmful": np.zeros(n),
        "error": (rng.random(n) < 0.01).astype(float),
        "deadline_missed": np.zeros(n),
        "negative_feedback": label,
        "output_tokens": rng.integers(5, 30, n).astype(float),
        "latency_ms": rng.normal(400, 50, n),
    }
    rep = build(aggregate(rows), "locale", 7 * 86400)
    assert [(o, s) for o, s, _, _ in rep.significant()] == [("refused", "l3")]
    (refusals,) = [o for o in rep.outcomes if o.name == "refused"]
    raw = MetricFrame(metrics=selection_rate, y_true=refused, y_pred=refused, sensitive_features=seg)
    assert abs(refusals.difference - raw.difference()) < 1e-12 and abs(refusals.ratio - raw.ratio()) < 1e-12
    low, high = refusals.difference_ci
    assert 0.03 < low < refusals.difference < high < 0.09  # the injected gap is 6 points
    (l3,) = [s for s in refusals.segments if s["segment"] == "l3"]
    assert l3["ci_low"] < 0.09 < l3["ci_high"] and l3["ci_low"] > 0.05
    labelled = ~np.isnan(label)
    assert (
        abs(
            rep.equalized_odds_difference
            - equalized_odds_difference(label[labelled], flagged[labelled], sensitive_features=seg[labelled])
        )
        < 1e-12
    )
    page = html_page(rep)
    assert page.count("<svg") == 8 and "<b>l3</b> on refused" in page


def test_the_report_refuses_a_segment_key_that_is_not_a_key() -> None:
    """The key also travels as a query parameter; anything but a plain key is refused
    before ClickHouse is reached."""
    from typer.testing import CliRunner

    from services.cli import app

    result = CliRunner().invoke(app, ["fairness", "report", "--by", "locale']) --"])
    assert result.exit_code == 1 and "a metadata key is letters" in result.output
