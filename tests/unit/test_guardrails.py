"""Guard rails (issue 20): the guards, the policies and the verdicts, without I/O."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import fastavro
import pydantic
import pytest

from services.common.registry import default_registry
from services.inference.guardrails.offensive import OffensiveLanguageGuard
from services.inference.guardrails.policy import GuardrailSettings, RailPolicy
from services.inference.guardrails.rails import GuardRails, verdict
from services.inference.responses import response_record

DATA = Path(__file__).resolve().parents[1] / "data" / "guardrails"


def lines(name: str) -> list[str]:
    return [t for t in (DATA / name).read_text().splitlines() if t.strip()]


@pytest.fixture(scope="module")
def offensive() -> OffensiveLanguageGuard:
    return OffensiveLanguageGuard()


def test_the_exported_model_is_the_packages_model(offensive: OffensiveLanguageGuard) -> None:
    """The plain-array model gives alt-profanity-check's own probabilities (through
    scikit-learn and its pickles, which Argus never loads at run time)."""
    from profanity_check import predict_prob

    texts = lines("offensive-positive.txt") + lines("offensive-negative.txt") + ["", "!!", "the and of"]
    theirs = predict_prob(texts)
    ours = [offensive.score(t) for t in texts]
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-9
    assert offensive.info.version == "alt-profanity-check==1.9.1" and offensive.info.digest.startswith("sha256:")


def test_the_offensive_guard_separates_the_labelled_set(offensive: OffensiveLanguageGuard) -> None:
    pos = [offensive.score(t) >= 0.5 for t in lines("offensive-positive.txt")]
    neg = [offensive.score(t) >= 0.5 for t in lines("offensive-negative.txt")]
    assert len(pos) == len(neg) == 100
    tp, fp = sum(pos), sum(neg)
    assert tp / (tp + fp) >= 0.95 and tp / len(pos) >= 0.9, (tp, fp)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def policy(**kw) -> RailPolicy:  # noqa: ANN003
    return RailPolicy.model_validate(kw)


def test_output_rails_flag_redact_and_block() -> None:
    rails = GuardRails(GuardrailSettings())
    rude = "Sure. You are a stupid idiot and a worthless loser. Anything else?"
    flagged = run(rails.check_output(rude, policy()))
    assert flagged.texts == [rude] and not flagged.blocked
    v = verdict(flagged.rails, policy())
    assert v["action"] == "flag" and [r["rail"] for r in v["rails"]] == ["output.pii", "output.offensive"]
    off = v["rails"][1]
    assert off["triggered"] and off["score"] > 0.9 and off["guard_version"] == "alt-profanity-check==1.9.1"

    redacted = run(rails.check_output(rude, policy(output={"offensive": "redact"})))
    assert redacted.texts == ["Sure.[OFFENSIVE] Anything else?"] and not redacted.blocked

    blocked = run(rails.check_output(rude, policy(output={"offensive": "block"})))
    assert blocked.blocked and verdict(blocked.rails, policy())["action"] == "block"

    benign = run(rails.check_output("The capital of France is Paris.", policy(output={"offensive": "block"})))
    assert not benign.blocked and verdict(benign.rails, policy())["action"] == "allow"


def test_personal_data_in_an_answer_is_redacted_and_counted_never_copied_into_the_verdict() -> None:
    rails = GuardRails(GuardrailSettings())
    answer = "Write to jane.doe@example.com or pay with 4111 1111 1111 1111."
    out = run(rails.check_output(answer, policy(output={"pii": "redact"})))
    assert out.texts == ["Write to [EMAIL] or pay with [CARD]."]
    (pii,) = [r for r in out.rails if r["rail"] == "output.pii"]
    assert pii["action"] == "redact" and pii["findings"] == {"EMAIL": 1, "CARD": 1}
    dumped = json.dumps(verdict(out.rails, policy()))
    assert "jane.doe" not in dumped and "4111" not in dumped


def test_deny_patterns_are_re2_and_block_by_default() -> None:
    # RE2: a pattern that backtracks exponentially in Python's re is linear here
    p = policy(deny_patterns=[r"(?i)project\s+falcon", r"(a+)+$"], output_budget_ms=10_000)
    rails = GuardRails(GuardrailSettings(default=p))
    out = run(rails.check_output("The plan is PROJECT  Falcon.", p))
    assert out.blocked and out.rails[0]["rail"] == "output.deny" and out.rails[0]["findings"] == {"DENY": 1}
    long = run(rails.check_output("a" * 100_000 + "b", p))
    assert not long.blocked and long.rails[0]["error"] is None and not long.rails[0]["triggered"]
    redact = policy(deny_patterns=[r"(?i)falcon"], output={"deny": "redact"})
    rails.configure(GuardrailSettings(default=redact))
    assert run(rails.check_output("Falcon and falcon", redact)).texts == ["[DENIED] and [DENIED]"]
    with pytest.raises(pydantic.ValidationError, match="not valid RE2"):
        policy(deny_patterns=["(unclosed"])
    with pytest.raises(pydantic.ValidationError):
        policy(output={"offensive": "shout"})
    with pytest.raises(pydantic.ValidationError):
        policy(input={"injection": "redact"})  # an injection has no span to redact


def test_input_rails_redact_personal_data_before_the_model() -> None:
    rails = GuardRails(GuardrailSettings())
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My IBAN is DE89370400440532013000"},
    ]
    out = run(rails.check_input(msgs, policy(input={"pii": "redact"})))
    assert out.texts == ["Be brief.", "My IBAN is [IBAN]"] and not out.blocked
    blocked = run(rails.check_input(msgs, policy(input={"pii": "block"})))
    assert blocked.blocked


def test_a_guard_that_fails_or_overruns_gets_the_policys_on_error() -> None:
    def broken():  # noqa: ANN202
        raise FileNotFoundError("no such model file")

    settings = GuardrailSettings(default=policy(input={"injection": "flag"}))
    rails = GuardRails(settings, injection_loader=broken)
    msgs = [{"role": "user", "content": "hello"}]
    closed = run(rails.check_input(msgs, policy(input={"injection": "flag"}, on_error="closed")))
    opened = run(rails.check_input(msgs, policy(input={"injection": "flag"}, on_error="open")))
    assert closed.blocked and closed.rails[0]["action"] == "block"
    assert "FileNotFoundError" in closed.rails[0]["error"]
    assert not opened.blocked and opened.rails[0]["action"] == "allow" and opened.rails[0]["error"]

    # a budget too small for any guard: the time budget is spent, on_error decides
    tight = policy(output={"offensive": "flag"}, output_budget_ms=1e-6, on_error="closed")
    out = run(rails.check_output("The capital of France is Paris.", tight))
    assert out.blocked and all(r["error"].startswith("timeout") for r in out.rails)
    lax = tight.model_copy(update={"on_error": "open"})
    out = run(rails.check_output("The capital of France is Paris.", lax))
    assert not out.blocked and out.texts == ["The capital of France is Paris."]


def test_a_tenants_policy_replaces_the_default() -> None:
    s = GuardrailSettings(tenants={"acme": policy(output={"offensive": "block"})})
    assert s.policy("acme").output.offensive == "block" and s.policy("globex").output.offensive == "flag"
    assert not s.uses_injection
    assert GuardrailSettings(tenants={"x": policy(input={"injection": "flag"})}).uses_injection


def test_the_response_carries_the_verdict_and_old_readers_still_read_it() -> None:
    reg = default_registry()
    codec = reg.codec("inference-responses")
    rails = GuardRails(GuardrailSettings())
    checked = run(rails.check_output("You stupid idiot.", policy(output={"offensive": "block"})))
    v = verdict(checked.rails, policy())
    request = {"request_id": "5d2a3c4b-1e2f-4a5b-8c7d-9e0f1a2b3c4d", "model": "m", "tenant": "acme", "messages": []}
    generation = {
        "text": "I can't help with that request.",
        "finish_reason": "content_filter",
        "input_tokens": 9,
        "output_tokens": 5,
        "latency_ms": 12.0,
        "guardrails": v,
    }
    rec = response_record(request, model_version="v1", generation=generation)
    assert rec["guard_action"] == "block" and json.loads(rec["guard_verdict"]) == v
    wire = codec.encode(rec)
    assert codec.decode(wire)["guard_action"] == "block"
    # a consumer still on v1 reads the v2 message (the new fields have defaults)
    v1, v2 = reg.parsed("inference_response", 1), reg.parsed("inference_response", 2)
    old = fastavro.schemaless_reader(io.BytesIO(wire[5:]), v2, v1)
    assert old["finish_reason"] == "content_filter" and "guard_action" not in old


def test_the_shipped_alert_rules_fire_on_blocked_harmful_and_injected_traffic() -> None:
    """Answers with real verdicts, through the alerting engine with the shipped rules."""
    from services.alerting.config import load_config
    from services.alerting.engine import AlertEngine
    from services.alerting.settings import DEFAULT_CONFIG
    from services.alerting.signals import response_signal

    rails = GuardRails(GuardrailSettings())
    block = policy(output={"offensive": "block"})
    rude = run(rails.check_output("You are a stupid worthless idiot.", block))
    fine = run(rails.check_output("Paris is the capital of France.", block))
    injected = [
        {
            "rail": "input.injection",
            "triggered": True,
            "action": "flag",
            "error": None,
            "elapsed_ms": 90.0,
        }
    ]
    request = {"request_id": "5d2a3c4b-1e2f-4a5b-8c7d-9e0f1a2b3c4d", "model": "m", "messages": []}

    def answer(tenant: str, rails_: list[dict], pol: RailPolicy) -> dict:
        gen = {"text": "x", "finish_reason": "stop", "latency_ms": 5.0, "guardrails": verdict(rails_, pol)}
        return response_record({**request, "tenant": tenant}, model_version="v1", generation=gen)

    eng = AlertEngine(load_config(DEFAULT_CONFIG), now=0)
    for i in range(40):
        for r in (
            answer("blk", rude.rails if i % 2 else fine.rails, block),  # half blocked
            answer("calm", fine.rails, block),
            answer("probe", injected, policy()),
        ):
            eng.observe(response_signal(r, 100.0), 100.0)
    firing = sorted((c.alert.labels["alertname"], c.alert.labels.get("tenant", "")) for c in eng.evaluate(100.0))
    assert ("GuardrailBlockRate", "blk") in firing and ("GuardrailBlockRate", "calm") not in firing
    assert ("HarmfulOutputRate", "") in firing  # 20 of the model's 120 answers offensive
    assert ("InjectionAttempts", "probe") in firing and ("InjectionAttempts", "blk") not in firing
    assert not any(name == "GuardrailErrors" for name, _ in firing)


def test_llama_guards_answer_becomes_a_score() -> None:
    from services.inference.guardrails.llama_guard import guard_verdict

    assert guard_verdict("safe") == {"unsafe": False, "categories": [], "score": 0.0}
    v = guard_verdict("unsafe\nS1, S10", [{"token": "unsafe", "logprob": -0.1}, {"token": "safe", "logprob": -2.4}])
    assert v["unsafe"] and v["categories"] == ["S1", "S10"] and 0.90 < v["score"] < 0.92


def test_a_served_guard_takes_the_offensive_rail_with_the_same_policy_semantics() -> None:
    """The rail's plumbing for a remote classifier (Llama Guard through a Serve handle on
    GPU nodes): its score against the threshold, categories as findings, its failures and
    overruns under on_error. The classifier here is a local coroutine with Llama Guard's
    answer format; the served model itself needs a GPU (docs/guardrails.md)."""
    from services.inference.guardrails.llama_guard import guard_verdict
    from services.inference.guardrails.offensive import GuardInfo

    async def classify(prompt: str, answer: str) -> dict:
        return guard_verdict("unsafe\nS10" if "idiot" in answer else "safe")

    async def broken(prompt: str, answer: str) -> dict:
        raise ConnectionError("replica gone")

    async def slow(prompt: str, answer: str) -> dict:
        await asyncio.sleep(5)
        return guard_verdict("safe")

    info = GuardInfo("llama-guard", "llama-guard-3-1b", "sha256:" + "c" * 64)
    rails = GuardRails(GuardrailSettings())
    rails.use_remote_guard(classify, info)
    block = policy(output={"offensive": "block", "pii": "off"})
    out = run(rails.check_output("You idiot.", block, prompt="Repeat: you idiot"))
    (r,) = out.rails
    assert out.blocked and r["guard"] == "llama-guard" and r["findings"] == {"S10": 1} and r["score"] == 1.0
    redact = policy(output={"offensive": "redact", "pii": "off"})
    assert run(rails.check_output("You idiot.", redact)).texts == ["[OFFENSIVE]"]
    assert not run(rails.check_output("Paris.", block)).blocked
    rails.use_remote_guard(broken, info)
    closed = run(rails.check_output("Paris.", block.model_copy(update={"on_error": "closed"})))
    assert closed.blocked and "ConnectionError" in closed.rails[0]["error"]
    rails.use_remote_guard(slow, info)
    late = run(rails.check_output("Paris.", block.model_copy(update={"output_budget_ms": 20})))
    assert not late.blocked and late.rails[0]["error"].startswith("timeout")
