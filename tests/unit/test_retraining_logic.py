"""Retraining without I/O: policy validation, the lifecycle's allowed transitions, the
book folded from records, and the policy engine's minimum evidence, cooldown and dedup."""

from __future__ import annotations

import uuid

import pytest

from services.alerting.config import ConfigError
from services.retraining.config import load_config
from services.retraining.lifecycle import PolicyEngine, TransitionError, TriggerBook, record
from services.retraining.registry import ModelRegistry, version_record, with_status
from services.retraining.service import retired_to_drain
from services.retraining.settings import DEFAULT_CONFIG


def cfg(**policy):
    return load_config({"policies": [{"name": "p", "kind": "drift", "min_events": 2, "cooldown": "1h", **policy}]})


def drift(model: str = "m", version: str = "v1", severity: str = "warning", feature: str = "prompt_chars") -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "model": model,
        "model_version": version,
        "feature": feature,
        "severity": severity,
    }


def test_default_policies_are_valid() -> None:
    assert {p.kind for p in load_config(DEFAULT_CONFIG).policies} == {"drift", "alert", "metric"}


@pytest.mark.parametrize(
    "policy,message",
    [
        ({"name": "s", "kind": "schedule"}, "needs an interval"),
        ({"name": "a", "kind": "alert"}, "needs matchers"),
        (
            {
                "name": "q",
                "kind": "metric",
                "model": "m",
                "model_version": "v",
                "query": "DROP TABLE x",
                "threshold": 1,
            },
            "must be a SELECT",
        ),
        ({"name": "d", "kind": "drift", "cooldown": "soon"}, "bad duration"),
    ],
)
def test_invalid_policies_fail_clearly(policy, message) -> None:
    with pytest.raises(ConfigError) as e:
        load_config({"policies": [policy]})
    assert message in str(e.value)


def test_lifecycle_allows_only_the_documented_transitions() -> None:
    book = TriggerBook()
    book.apply(record("t1", 1, "m", "v1", "p", "proposed", "why", "svc", now=1))
    for state in ("awaiting_approval", "approved", "dispatched"):
        book.apply(book.next_record("t1", state, "x", now=2))
    with pytest.raises(TransitionError, match="cannot become 'promoted'"):
        book.next_record("t1", "promoted", "x")
    book.apply(book.next_record("t1", "candidate_registered", "x", candidate_version="v2"))
    assert book.triggers["t1"].candidate_version == "v2" and book.triggers["t1"].sequence == 5
    replay = record("t1", 3, "m", "v1", "p", "approved", "why", "x")
    assert book.apply(replay).state == "candidate_registered"  # an old record replayed changes nothing
    with pytest.raises(TransitionError):
        book.apply(record("t1", 9, "m", "v1", "p", "canary", "why", "x"))  # a gap in the sequence


def test_rejected_trigger_is_closed() -> None:
    book = TriggerBook()
    book.apply(record("t1", 1, "m", "v1", "p", "proposed", "why", "svc"))
    book.apply(book.next_record("t1", "awaiting_approval", "svc"))
    book.apply(book.next_record("t1", "rejected", "alice", "not now"))
    assert not book.triggers["t1"].open
    with pytest.raises(TransitionError, match="closed"):
        book.next_record("t1", "dispatched", "svc")


def test_one_episode_one_trigger_minimum_evidence_and_cooldown() -> None:
    book = TriggerBook()
    engine = PolicyEngine(cfg(), book)
    assert engine.on_drift(drift(), now=100) == []  # one event: below minimum evidence
    assert engine.on_drift(drift(severity="info"), now=101) == []  # below min severity: not evidence
    (p,) = engine.on_drift(drift(feature="prompt_words"), now=102)
    assert len(p.drift_event_ids) == 2 and "prompt_chars, prompt_words" in p.reason
    book.apply(record("t1", 1, "m", "v1", "p", "proposed", p.reason, "svc", now=102))
    assert engine.on_drift(drift(), now=110) == [] and engine.on_drift(drift(), now=111) == []  # open trigger: dedup
    book.apply(book.next_record("t1", "awaiting_approval", "svc", now=112))
    book.apply(book.next_record("t1", "rejected", "alice", now=113))
    assert engine.on_drift(drift(), now=200) == [] and engine.on_drift(drift(), now=201) == []  # cooldown (1 h)
    engine.on_drift(drift(), now=102 + 3600)
    assert len(engine.on_drift(drift(), now=102 + 3601)) == 1  # a new episode after the cooldown


def test_sustained_for_and_alert_policies() -> None:
    book = TriggerBook()
    engine = PolicyEngine(cfg(sustained_for="60s"), book)
    assert engine.on_drift(drift(), now=0) == [] and engine.on_drift(drift(), now=30) == []
    assert len(engine.on_drift(drift(), now=61)) == 1
    alerts = PolicyEngine(
        load_config({"policies": [{"name": "a", "kind": "alert", "matchers": ['alertname="Drift"']}]}), book
    )
    firing = {
        "event_id": "e1",
        "status": "firing",
        "receiver": None,
        "rule": "Drift",
        "severity": "warning",
        "labels": {"alertname": "Drift", "model": "m", "model_version": "v1"},
        "annotations": {"summary": "s"},
    }
    assert [p.model_version for p in alerts.on_alert(firing, 0)] == ["v1"]
    assert alerts.on_alert(firing | {"receiver": "hook"}, 0) == []  # a notification is not new evidence
    assert alerts.on_alert(firing | {"labels": {"alertname": "Other"}}, 0) == []


def test_registry_fold() -> None:
    reg = ModelRegistry()
    v1 = version_record("m", "v1", "active", "/a.gguf", "a" * 64, actor="ops", now=1)
    reg.apply(v1)
    reg.apply(version_record("m", "v2", "candidate", "/b.gguf", "b" * 64, actor="ci", trigger_id="t1", now=2))
    assert reg.candidate_for("t1")["version"] == "v2" and reg.active("m")["version"] == "v1"
    reg.apply(with_status(reg.get("m", "v2"), "active", "svc"))
    reg.apply(with_status(v1, "deprecated", "svc"))
    assert reg.active("m")["version"] == "v2" and reg.candidate_for("t1") is None
    with pytest.raises(ValueError, match="64 hex"):
        version_record("m", "v3", "candidate", "/c", "xyz", actor="ci")


def test_a_retired_version_stays_retired() -> None:
    reg = ModelRegistry()
    v1 = version_record("m", "v1", "active", "/a.gguf", "a" * 64, actor="ops", now=1)
    assert reg.apply(v1)
    assert reg.apply(with_status(v1, "retired", "ops", "license withdrawn"))
    assert not reg.apply(with_status(v1, "active", "ops"))  # cannot be promoted again
    assert not reg.apply(with_status(v1, "canary", "argus-retraining"))
    assert reg.retired("m", "v1") and reg.active("m") is None
    assert not reg.retired("m", "v2")


def live(*versions: tuple[str, float, bool]) -> list[dict]:
    return [{"version": v, "weight": w, "shadow": shadow} for v, w, shadow in versions]


def test_retired_versions_are_drained_unless_nothing_would_serve() -> None:
    reg = ModelRegistry()
    for v in ("v1", "v2", "v3", "s1"):
        reg.apply(version_record("m", v, "active", f"/{v}.gguf", "a" * 64, actor="ops", now=1))
        reg.apply(version_record("n", v, "active", f"/{v}.gguf", "a" * 64, actor="ops", now=1))
    for model, v in (("m", "v1"), ("m", "s1"), ("n", "v1"), ("n", "v3")):
        reg.apply(with_status(reg.get(model, v), "retired", "ops"))
    serving = {
        "m": live(("v1", 70.0, False), ("v2", 30.0, False), ("s1", 0.0, True)),  # v1 and its shadow go
        "n": live(("v1", 100.0, False), ("v2", 0.0, True)),  # v1 is the only live version: it stays
        "o": live(("v1", 100.0, False)),  # unregistered: nothing to do
    }
    drain, blocked = retired_to_drain(reg, serving, canaries=set())
    assert drain == [("m", "v1"), ("m", "s1")] and blocked == {("n", "v1")}
    # a retired canary is its trigger's to roll back
    drain, _ = retired_to_drain(reg, serving, canaries={("m", "v1")})
    assert drain == [("m", "s1")]


def test_a_drift_episode_that_ended_is_not_evidence_for_retraining() -> None:
    engine = PolicyEngine(cfg(), TriggerBook())
    assert engine.on_drift(drift(), now=100) == []
    assert engine.on_drift(drift(feature="prompt_words") | {"status": "ended"}, now=102) == []
    (p,) = engine.on_drift(drift(feature="prompt_words") | {"status": "started"}, now=103)
    assert len(p.drift_event_ids) == 2
