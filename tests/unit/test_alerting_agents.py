"""The alerting app's agents, driven with faust's ``agent.test_context()`` (no broker):
records in, signals out; invalid ones dead-lettered; the engine agent applies signals,
holds them while this worker does not own the engine, and the runtime publishes alert
records in order, keeps what the broker refused, and restores from its tables."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from services.alerting.app import create_app
from services.alerting.runtime import TABLES, AlertingRuntime
from services.alerting.settings import AlertingSettings
from services.alerting.windows import Signal
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import default_registry, get_codec
from tests.unit.test_alerting_logic import config

REG = default_registry()
SETTINGS = AlertingSettings(health_enabled=False, webhook_secrets={"s": "secret"}, evaluation_interval_s=0.0)


class DeadLetters:
    """Collects what the extract agents dead-letter (the writer's interface)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.valid_count = 0

    async def send(self, event: Any, reason: str, error_type: str = "") -> None:
        self.sent.append((reason, error_type))

    def valid(self, event: Any) -> None:
        self.valid_count += 1


def app_with_collectors(settings: AlertingSettings = SETTINGS):  # noqa: ANN201 - (app, emitted, dead letters)
    app = create_app(settings, config())
    emitted: list[dict] = []

    async def emit(body: dict) -> None:
        emitted.append(body)

    dead = DeadLetters()
    app.argus_alerting.emit = emit
    app.argus_alerting.dlq = dead
    return app, emitted, dead


def example(key: str) -> dict:
    return REG.examples(key)[REG.topic(key).version][0][1]


async def test_a_response_becomes_a_signal_and_labels_later_feedback() -> None:
    app, emitted, dead = app_with_collectors()
    response = example("inference-responses") | {"request_id": "r-1", "model": "m1", "model_version": "v7"}
    feedback = example("feedback") | {"request_id": "r-1", "kind": "thumbs", "score": 0.0}
    async with app.agents["argus-alerting.extract.inference-responses"].test_context() as agent:
        await agent.put(key=b"r-1", value=get_codec("inference-responses").encode(response))
    async with app.agents["argus-alerting.extract.feedback"].test_context() as agent:
        await agent.put(key=b"r-1", value=get_codec("feedback").encode(feedback))
    resp, fb = (Signal.from_json(b) for b in emitted)
    assert resp.source == "responses" and resp.labels["model"] == "m1"
    assert fb.source == "feedback" and (fb.labels["model"], fb.labels["model_version"]) == ("m1", "v7")
    assert fb.values["negative"] == 1.0 and dead.sent == [] and dead.valid_count == 2


async def test_undecodable_records_and_bad_or_unsigned_silences_are_dead_lettered_not_emitted(tmp_path) -> None:  # noqa: ANN001
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.common.governance import GovernanceSettings, Signer, add_trusted

    trust = tmp_path / "trust.yaml"
    alice, ci = Signer("alice", Ed25519PrivateKey.generate()), Signer("ci", Ed25519PrivateKey.generate())
    add_trusted(trust, "alice", alice.key.public_key(), ["operator"])
    add_trusted(trust, "ci", ci.key.public_key(), ["pipeline"])
    app, emitted, dead = app_with_collectors(
        SETTINGS.model_copy(update={"governance": GovernanceSettings(trust_file=trust)})
    )
    codec = get_codec("alert-silences")

    def silence(signer: Signer | None, **changes: Any) -> bytes:
        rec = example("alert-silences") | {"signature": None, "created_by": "alice"} | changes
        return codec.encode(signer.sign_record(codec.name, codec.version, rec) if signer else rec)

    async with app.agents["argus-alerting.extract.alert-silences"].test_context() as agent:
        await agent.put(key=b"s", value=silence(alice, matchers=["model=~(("]))
        await agent.put(key=b"s", value=b"not avro")
        await agent.put(key=b"s", value=silence(None))  # nobody signed it
        await agent.put(key=b"s", value=silence(ci, created_by="ci"))  # a key that may not mute alerts
        await agent.put(key=b"s", value=silence(alice, created_by="bob"))  # alice's key, bob's name
        await agent.put(key=b"s", value=silence(alice))  # the one to apply
    assert [t for _, t in dead.sent] == [
        "InvalidMessage.MatcherError",
        "InvalidMessage.SerializationError",
        "Refused.unsigned",
        "Refused.wrong_role",
        "Refused.wrong_actor",
    ]
    assert [body["silence"]["created_by"] for body in emitted] == ["alice"]


def runtime(tables: dict, owner: list[bool], sent: list, fail: list[int] | None = None) -> AlertingRuntime:
    async def send(key: bytes, value: bytes) -> None:
        if fail and fail[0] > 0:
            fail[0] -= 1
            raise KafkaTimeoutError()
        sent.append(get_codec("alerts").decode(value))

    return AlertingRuntime(
        SETTINGS, config(), tables, send, lambda: owner[0], Metrics("t"), get_logger("t"), get_codec("alerts")
    )


def error_signal(model: str = "m") -> dict:
    labels = {"model": model, "model_version": "v1", "tenant": "acme"}
    return Signal("responses", time.time(), labels, {"error": 1.0, "latency_ms": 10.0, "tokens": 1.0}).to_json()


async def test_the_engine_agent_applies_signals_and_the_runtime_publishes_and_restores() -> None:
    app, _, _ = app_with_collectors()
    tables: dict = {name: {} for name in TABLES}
    owner, sent = [True], []
    rt = runtime(tables, owner, sent)
    app.argus_alerting.runtime = rt
    async with app.agents["argus-alerting.engine"].test_context() as agent:
        for _ in range(12):
            body = error_signal()
            await agent.put(key=b"signals", value=json.dumps(body).encode())
    await rt.step(rt.engine())
    assert [(r["rule"], r["status"]) for r in sent] == [("HighErrorRate", "firing")]
    assert tables["alerts"]  # persisted
    # another worker takes over: the same tables give the same alert
    again = runtime(tables, [True], [])
    assert [a.rule for a in again.engine().alerts.values()] == ["HighErrorRate"]


async def test_signals_are_held_while_not_the_owner_and_applied_on_taking_over() -> None:
    owner, sent = [False], []
    rt = runtime({name: {} for name in TABLES}, owner, sent)
    for _ in range(12):
        rt.on_signal(error_signal())
    assert rt.engine() is None and len(rt.held) == 12
    owner[0] = True
    eng = rt.engine()
    assert eng is not None and not rt.held
    await rt.step(eng)
    assert [r["status"] for r in sent] == ["firing"]


async def test_a_refused_alert_record_stays_queued_and_goes_out_in_order() -> None:
    sent: list = []
    rt = runtime({name: {} for name in TABLES}, [True], sent, fail=[1])
    eng = rt.engine()
    for _ in range(12):
        rt.apply_signal(eng, error_signal("a"))
    await rt.step(eng)
    assert sent == [] and len(rt.outbox) == 1 and not rt.sink_healthy
    for _ in range(12):
        rt.apply_signal(eng, error_signal("b"))
    await rt.step(eng)
    assert [r["labels"]["model"] for r in sent] == ["a", "b"] and rt.outbox == [] and rt.sink_healthy


@pytest.mark.parametrize("owner", [True, False])
async def test_the_api_answers_only_on_the_owner(owner: bool) -> None:
    rt = runtime({name: {} for name in TABLES}, [owner], [])
    resp = await rt.api_silences(None)
    assert resp.status == (200 if owner else 503)


def test_an_expired_silence_is_not_revived_by_a_replayed_create() -> None:
    rt = runtime({name: {} for name in TABLES}, [True], [])
    eng = rt.engine()
    now = time.time()
    create = {
        "id": "s1",
        "action": "create",
        "matchers": ['model="m"'],
        "starts_at": now - 1,
        "ends_at": now + 3600,
        "created_by": "alice",
        "comment": "maintenance",
    }
    rt.apply_signal(eng, {"silence": create})
    assert eng.silences["s1"].active(time.time())
    rt.apply_signal(eng, {"silence": create | {"action": "expire", "matchers": []}})
    rt.apply_signal(eng, {"silence": create})  # the signed create, replayed onto the topic
    rt.apply_signal(eng, {"silence": create | {"action": "update", "ends_at": now + 7200}})
    assert not eng.silences["s1"].active(time.time())
