"""Alerting logic without I/O: configuration errors, fingerprints and matchers, sliding
windows, the engine's Alertmanager semantics (for, grouping, dedup, repeat, resolve,
silences, inhibition, restart) and the webhook payload and signature."""

from __future__ import annotations

import json
import time

import pytest

from services.alerting.app import alert_record, dead_letter_signal, feedback_signal, is_negative, response_signal
from services.alerting.config import ConfigError, SlackConfig, load_config
from services.alerting.engine import AlertEngine, Silence
from services.alerting.notify import slack_payload, webhook_payload
from services.alerting.settings import DEFAULT_CONFIG
from services.alerting.windows import Signal, SlidingWindow
from services.common.durations import parse_duration
from services.common.labels import Matcher, MatcherError, fingerprint
from services.common.registry import get_codec
from services.common.webhook import sign, verify_signature


def config(**over):
    base = {
        "rules": [
            {
                "name": "HighErrorRate",
                "source": "responses",
                "metric": "error_rate",
                "by": ["model"],
                "window": "60s",
                "op": ">",
                "threshold": 0.2,
                "min_events": 10,
                "for": "0s",
                "severity": "critical",
                "annotations": {"summary": "error rate {value:.0%} on {model}"},
            },
            {
                "name": "Drift",
                "source": "drift",
                "metric": "count",
                "by": ["model", "feature"],
                "window": "60s",
                "threshold": 0,
                "severity": "warning",
            },
        ],
        "route": {
            "receiver": "hook",
            "group_by": ["alertname", "model"],
            "group_wait": "2s",
            "group_interval": "30s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "hook", "webhook_configs": [{"url": "http://127.0.0.1:1/x", "secret": "s"}]}],
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="HighErrorRate"'],
                "target_matchers": ['alertname="Drift"'],
                "equal": ["model"],
            }
        ],
    }
    base.update(over)
    return load_config(base)


def responses(eng: AlertEngine, t: float, n: int, errors: int, model: str = "m") -> None:
    for i in range(n):
        eng.observe(
            Signal(
                "responses",
                t,
                {"model": model, "model_version": "v1", "tenant": "acme"},
                {"error": 1.0 if i < errors else 0.0, "latency_ms": 100.0, "tokens": 10.0},
            ),
            t,
        )


def test_default_config_is_valid() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert {r.name for r in cfg.rules} >= {"InferenceErrorRate", "DriftDetected", "DeadLetters", "ConsumerLag"}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"rules": [{"name": "X", "source": "responses", "metric": "p95"}]}, "metric 'p95' is not available"),
        ({"rules": [{"name": "X", "source": "drift", "by": ["tenant"]}]}, "label 'tenant' does not exist on drift"),
        ({"rules": [{"name": "X", "source": "drift", "window": "5 minutes"}]}, "bad duration"),
        ({"rules": [{"name": "X", "source": "drift", "matchers": ["model=='x'"]}]}, "bad matcher"),
        ({"rules": [{"name": "X", "source": "drift", "annotations": {"s": "{nope}"}}]}, "uses {nope}"),
        ({"route": {"receiver": "nobody"}}, "receiver 'nobody' is not defined"),
        ({"rules": [{"name": "X", "source": "drift", "labels": {"severity": "x"}}]}, "may not set 'severity'"),
    ],
)
def test_invalid_configs_fail_with_the_place_and_reason(change, message) -> None:
    with pytest.raises(ConfigError) as e:
        config(**change)
    assert message in str(e.value)


def test_durations_and_matchers() -> None:
    assert parse_duration("250ms") == 0.25 and parse_duration("5m") == 300 and parse_duration(3) == 3
    assert Matcher.parse('a=~"x|y"').matches({"a": "y"}) and not Matcher.parse('a=~"x"').matches({"a": "xx"})
    assert Matcher.parse('a!="1"').matches({}) and Matcher.parse('a=""').matches({})
    with pytest.raises(MatcherError):
        Matcher.parse('a=~"("')


def test_fingerprint_is_prometheus_fnv1a() -> None:
    assert fingerprint({}) == "cbf29ce484222325"  # FNV-1a 64 offset basis: Prometheus' empty label set
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"}) != fingerprint({"a": "2", "b": "1"})


def test_windows_compute_rates_quantiles_and_changes() -> None:
    w = SlidingWindow("latency_p95", 10, min_events=5)
    for i in range(100):
        w.add(100 + i * 0.05, {"latency_ms": float(i)})
    assert w.metric(105)[0] == pytest.approx(94.05)
    assert w.metric(200) == (None, 0)  # everything expired: no verdict
    c = SlidingWindow("throughput_change", 10, min_events=5)
    for i in range(20):
        c.add(100 + i * 0.5, {})  # 20 events over 10 s
    for i in range(5):
        c.add(110 + i * 2, {})  # 5 in the next 10 s
    assert c.metric(119.9)[0] == pytest.approx(5 / 20)
    e = SlidingWindow("error_rate", 60, min_events=10)
    for i in range(9):
        e.add(1, {"error": 1.0})
    assert e.metric(2) == (None, 9)  # too few events for a verdict
    e.add(2, {"error": 0.0})
    assert e.metric(2)[0] == pytest.approx(0.9)


def test_breach_fires_once_per_group_and_resolves() -> None:
    eng = AlertEngine(config(), now=0)
    responses(eng, 100, 20, errors=10)
    changes = eng.evaluate(100)
    assert [(c.status, c.alert.labels["model"]) for c in changes] == [("firing", "m")]
    assert changes[0].alert.annotations["summary"] == "error rate 50% on m"
    assert eng.flush(101)[0] == []  # group_wait (2 s) not over
    notes, _ = eng.flush(102)
    assert (
        len(notes) == 1
        and notes[0].status == "firing"
        and notes[0].group_labels == {"alertname": "HighErrorRate", "model": "m"}
    )
    assert eng.flush(103)[0] == []  # in flight: never twice
    eng.delivered(notes[0], 102.1)
    responses(eng, 110, 20, errors=10)  # the same breach again within group_interval
    assert eng.evaluate(110) == []
    assert eng.flush(132.1)[0] == []  # next group_interval: nothing new -> no duplicate
    responses(eng, 200, 30, errors=0)  # the old events left the window; condition clears
    assert [c.status for c in eng.evaluate(200)] == ["resolved"]
    notes, _ = eng.flush(200)
    assert len(notes) == 1 and notes[0].status == "resolved" and notes[0].resolved == [changes[0].alert.fingerprint]
    eng.delivered(notes[0], 200)
    assert eng.alerts == {} and eng.groups == {}  # resolved and told: forgotten
    dirty = eng.take_dirty()
    assert list(dirty["alerts"].values()) == [None]


def test_for_duration_keeps_alert_pending_until_it_holds() -> None:
    cfg = config(
        rules=[
            {
                "name": "Slow",
                "source": "responses",
                "metric": "latency_p95",
                "by": ["model"],
                "window": "60s",
                "threshold": 50,
                "min_events": 5,
                "for": "30s",
            }
        ]
    )
    eng = AlertEngine(cfg, now=0)
    responses(eng, 100, 10, errors=0)
    assert [c.status for c in eng.evaluate(100)] == ["pending"]
    responses(eng, 120, 10, errors=0)
    assert eng.evaluate(120) == []
    responses(eng, 131, 10, errors=0)
    assert [c.status for c in eng.evaluate(131)] == ["firing"]


def test_repeat_interval_renotifies_and_keys_are_stable_across_retries() -> None:
    eng = AlertEngine(config(), now=0)
    responses(eng, 100, 20, errors=10)
    eng.evaluate(100)
    first, _ = eng.flush(102)
    eng.delivery_failed(first[0])
    retry, _ = eng.flush(132)  # offered again at the next group_interval, same key
    assert retry[0].idempotency_key == first[0].idempotency_key
    eng.delivered(retry[0], 132)
    t = 132.0
    while t < 132 + 3600:
        t += 30
        responses(eng, t, 20, errors=10)
        eng.evaluate(t)
        notes, _ = eng.flush(t)
        if notes:
            break
    assert t >= 132 + 3600 and notes[0].idempotency_key != first[0].idempotency_key  # a repeat is a new notification


def test_silence_suppresses_and_inhibition_mutes_the_target() -> None:
    eng = AlertEngine(config(), now=0)
    eng.add_silence(Silence("s1", ['alertname="HighErrorRate"', 'model="m"'], 0, 1000, "alice", "maintenance"), 0)
    responses(eng, 100, 20, errors=10)
    eng.evaluate(100)
    notes, muted = eng.flush(102)
    assert notes == [] and [c.status for c in muted] == ["suppressed"]
    # drift on model m is inhibited by the firing error-rate alert on m; drift on n is not
    for model in ("m", "n"):
        eng.observe(
            Signal(
                "drift",
                103,
                {
                    "model": model,
                    "model_version": "v1",
                    "feature": "prompt_length",
                    "detector": "ks",
                    "drift_severity": "warning",
                },
                {"statistic": 0.3, "threshold": 0.2},
            ),
            103,
        )
    eng.evaluate(103)
    notes, _ = eng.flush(106)
    assert [n.group_labels for n in notes] == [{"alertname": "Drift", "model": "n"}]
    eng.expire_silence("s1", 110)
    notes, _ = eng.flush(132.1)
    assert {n.group_labels["alertname"] for n in notes} == {"HighErrorRate"}


def test_restart_restores_alerts_silences_and_log_without_resending() -> None:
    eng = AlertEngine(config(), now=0)
    eng.add_silence(Silence("s1", ['model="other"'], 0, 10_000, "alice", ""), 0)
    responses(eng, 100, 20, errors=10)
    eng.evaluate(100)
    notes, _ = eng.flush(102)
    eng.delivered(notes[0], 102)
    saved = eng.take_dirty()
    again = AlertEngine(config(), now=150)
    again.restore(
        alerts=[v for v in saved["alerts"].values() if v],
        silences=[v for v in saved["silences"].values() if v],
        nflog=[(k, v) for k, v in saved["nflog"].items() if v],
        now=150,
    )
    assert again.flush(152)[0] == []  # group rebuilt; log says it was sent
    again.evaluate(153, everything=True)  # empty windows just after a start: no resolution (warm-up)
    assert again.alerts[notes[0].firing[0]].state == "firing"
    assert "s1" in again.silences


def test_webhook_payload_is_alertmanager_v4_and_signed() -> None:
    eng = AlertEngine(config(), now=0)
    responses(eng, 100, 20, errors=10)
    eng.evaluate(100)
    note = eng.flush(102)[0][0]
    p = webhook_payload(note, "http://argus:9095")
    assert p["version"] == "4" and p["status"] == "firing" and p["receiver"] == "hook"
    assert set(p) == {
        "version",
        "groupKey",
        "truncatedAlerts",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
    }
    a = p["alerts"][0]
    assert a["endsAt"] == "0001-01-01T00:00:00Z" and a["startsAt"].endswith("Z") and a["fingerprint"] == note.firing[0]
    assert p["commonLabels"]["alertname"] == "HighErrorRate"
    body = json.dumps(p).encode()
    ts = str(int(time.time()))
    headers = {"X-Argus-Timestamp": ts, "X-Argus-Signature": sign(b"k", ts, body)}
    assert verify_signature(b"k", headers, body)
    assert not verify_signature(b"other", headers, body) and not verify_signature(b"k", headers, body + b" ")
    slack = slack_payload(note, SlackConfig(url="http://x", channel="#a"), "http://argus")
    assert slack["channel"] == "#a" and slack["attachments"][0]["color"] == "danger"


def test_signals_from_records_and_alert_records_encode() -> None:
    r = {
        "model": "m",
        "model_version": "v1",
        "tenant": "t",
        "status": "error",
        "latency_ms": 5.0,
        "input_tokens": 3,
        "output_tokens": 4,
        "mean_logprob": None,
    }
    s = response_signal(r, 1.0)
    assert s.values["error"] == 1.0 and s.values["tokens"] == 7.0
    assert is_negative({"kind": "thumbs", "score": 0.0}) and not is_negative({"kind": "rating", "score": 4.0})
    assert feedback_signal({"tenant": "t", "kind": "thumbs", "score": 0.0}, None, 1).labels["model"] == "unknown"
    assert dead_letter_signal(None, "p.argus.feedback.dlq", 1).labels["original_topic"] == "p.argus.feedback"
    eng = AlertEngine(config(), now=0)
    responses(eng, 100, 20, errors=10)
    change = eng.evaluate(100)[0]
    rec = alert_record(change.alert, "firing", 100.0, "hook", "g", "http://x")
    codec = get_codec("alerts")
    assert codec.decode(codec.encode(rec))["status"] == "firing"


def test_a_drift_episode_that_ended_is_not_counted_as_a_new_drift() -> None:
    """DriftEvent v2: the default DriftDetected rule counts starts; an ended event is a
    signal labelled drift_status="ended" that a rule may match, but does not fire it."""
    from services.alerting.signals import drift_signal
    from services.common.registry import default_registry

    cfg = load_config(DEFAULT_CONFIG)
    v2 = {path.name: rec for path, rec in default_registry().examples("drift-events")[2]}
    started, ended = v2["cusum_rate_started.json"], v2["cusum_rate_ended.json"]
    assert drift_signal(ended, 10).labels["drift_status"] == "ended"
    only_ended = AlertEngine(cfg, now=0)
    only_ended.observe(drift_signal(ended, 10), 10)
    assert [c.alert.labels["alertname"] for c in only_ended.evaluate(10)] == []
    both = AlertEngine(cfg, now=0)
    both.observe(drift_signal(started, 10), 10)
    assert "DriftDetected" in [c.alert.labels["alertname"] for c in both.evaluate(10)]
