"""Traffic changes as serving-state records, without a broker: what the retraining side
asks for (revisions, weights, shadows kept) and how it reads the inference service's
answer; what the inference side turns a desired state into (or refuses)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from services.common.governance import GovernanceSettings, Signer, add_trusted, card_digest
from services.common.registry import get_codec
from services.common.settings import KafkaSettings
from services.inference.serving import ServingStateApplier, served_versions
from services.inference.settings import InferenceSettings, ModelVersion
from services.retraining.rollout import RolloutFailed, ServingRollout

MODEL = "smollm2-135m-instruct"


class Producer:
    """Records what is sent; answers each desired state through ``answer``."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.answer: Any = None

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        rec = get_codec("serving-state").decode_plain(value)
        self.sent.append(rec)
        if self.answer is not None:
            asyncio.get_running_loop().call_soon(self.answer, rec)


def applied(rollout: ServingRollout, versions: list[dict[str, Any]], revision: int = 0) -> None:
    rollout.observe({"model": MODEL, "revision": revision, "status": "applied", "versions": versions, "comment": ""})


def v(version: str, weight: float, shadow: bool = False) -> dict[str, Any]:
    return {
        "version": version,
        "weight": weight,
        "artifact_uri": f"/m/{version}.gguf",
        "sha256": None,
        "shadow": shadow,
    }


async def test_a_canary_scales_the_live_versions_keeps_shadows_and_waits_for_the_answer() -> None:
    producer = Producer()
    rollout = ServingRollout(KafkaSettings(), producer, "argus-retraining", timeout_s=5)
    applied(rollout, [v("v1", 60.0), v("v0", 40.0), v("s1", 1.0, shadow=True)], revision=7)

    def answer(rec: dict[str, Any]) -> None:
        rollout.observe(rec | {"status": "applied", "comment": "ok"})

    producer.answer = answer
    await rollout.canary(MODEL, "v2", "/m/v2.gguf", "ab" * 32, 10.0, trigger_id="t-1")
    (desired,) = producer.sent
    assert desired["status"] == "desired" and desired["revision"] == 8 and desired["trigger_id"] == "t-1"
    weights = {x["version"]: (x["weight"], x["shadow"]) for x in desired["versions"]}
    assert weights == {"v1": (54.0, False), "v0": (36.0, False), "s1": (1.0, True), "v2": (10.0, False)}
    assert rollout.serving(MODEL) == desired["versions"]  # what is live is what was acknowledged


async def test_promotion_drains_the_others_and_a_rollback_rescales_the_rest() -> None:
    producer = Producer()
    rollout = ServingRollout(KafkaSettings(), producer, "argus-retraining", timeout_s=5)
    applied(rollout, [v("v1", 90.0), v("v2", 10.0)])
    producer.answer = lambda rec: rollout.observe(rec | {"status": "applied"})
    assert await rollout.promote(MODEL, "v2") == ["v1"]
    assert [(x["version"], x["weight"]) for x in producer.sent[-1]["versions"]] == [("v2", 100.0)]
    applied(rollout, [v("v2", 90.0), v("v3", 10.0)], revision=1)
    await rollout.rollback(MODEL, "v3")
    assert [(x["version"], x["weight"]) for x in producer.sent[-1]["versions"]] == [("v2", 100.0)]
    assert [r["revision"] for r in producer.sent] == [1, 2]
    applied(rollout, [v("v2", 100.0), v("s1", 0.0, shadow=True)], revision=2)
    with pytest.raises(RolloutFailed, match="would leave no version"):
        await rollout.rollback(MODEL, "v2")
    assert len(producer.sent) == 2  # nothing asked for


async def test_a_refused_or_unanswered_change_is_a_rollout_failure() -> None:
    producer = Producer()
    rollout = ServingRollout(KafkaSettings(), producer, "argus-retraining", timeout_s=0.2)
    with pytest.raises(RolloutFailed, match="no serving state"):
        await rollout.canary(MODEL, "v2", "/m/v2.gguf", "ab" * 32, 10.0)
    applied(rollout, [v("v1", 100.0)])
    producer.answer = lambda rec: rollout.observe(rec | {"status": "failed", "comment": "digest mismatch"})
    with pytest.raises(RolloutFailed, match="digest mismatch"):
        await rollout.canary(MODEL, "v2", "/m/v2.gguf", "ab" * 32, 10.0)
    producer.answer = None
    with pytest.raises(RolloutFailed, match="no answer"):
        await rollout.promote(MODEL, "v1")
    assert rollout.serving(MODEL) == [v("v1", 100.0)]  # nothing changed without an acknowledgement


def test_the_inference_side_keeps_per_version_tunables_and_refuses_a_bad_state(tmp_path: Path) -> None:
    settings = InferenceSettings(
        versions=(ModelVersion(version="v1", weight=100.0, max_replicas=3),),
        allow_unsigned_models=True,
        governance=GovernanceSettings(trust_file=tmp_path / "none.yaml"),
    )
    applier = ServingStateApplier(settings, Producer(), deploy=lambda s: None)
    wanted = applier.desired_settings({"model": MODEL, "versions": [v("v1", 90.0), v("v2", 10.0)]})
    by_version = {x.version: x for x in wanted.versions}
    assert by_version["v1"].max_replicas == 3 and by_version["v1"].weight == 90.0
    assert by_version["v2"].model_path == Path("/m/v2.gguf") and by_version["v2"].max_replicas == 1
    assert served_versions(wanted.versions)[1]["artifact_uri"] == "/m/v2.gguf"
    with pytest.raises(ValueError, match="at least one version"):
        applier.desired_settings({"model": MODEL, "versions": []})
    with pytest.raises(ValueError):
        applier.desired_settings({"model": MODEL, "versions": [v("not a valid version!", 100.0)]})


def test_a_state_whose_artifact_no_trusted_pipeline_key_signed_is_refused_before_deploying(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    trust = tmp_path / "trust.yaml"
    ci, stranger = Signer("ci", Ed25519PrivateKey.generate()), Signer("ci", Ed25519PrivateKey.generate())
    add_trusted(trust, "ci", ci.key.public_key(), ["pipeline"])
    deployed: list[Any] = []
    settings = InferenceSettings(  # explicit: the environment of a test session may allow unsigned models
        versions=(ModelVersion(version="v1", weight=100.0),),
        governance=GovernanceSettings(trust_file=trust),
        allow_unsigned_models=False,
    )
    applier = ServingStateApplier(settings, Producer(), deploy=deployed.append)
    card = card_digest({"owner": "ml"})

    def signed(signer: Signer, sha: str = "ab" * 32) -> dict[str, Any]:
        return v("v2", 10.0) | {
            "sha256": sha,
            "card_sha256": card,
            "artifact_signature": signer.sign_artifact("smollm2-135m-instruct", "v2", "ab" * 32, {"owner": "ml"}),
        }

    # v1 (unsigned) is refused where unsigned models are not allowed: the production default
    with pytest.raises(ValueError, match="v1: the artifact is not signed"):
        applier.desired_settings({"model": MODEL, "versions": [v("v1", 100.0)]})
    applier.current = settings.model_copy(update={"allow_unsigned_models": True})
    wanted = applier.desired_settings({"model": MODEL, "versions": [v("v1", 90.0), signed(ci)]})
    assert [x.artifact_signature is not None for x in wanted.versions] == [False, True]
    with pytest.raises(ValueError, match="not in the trust file"):
        applier.desired_settings({"model": MODEL, "versions": [v("v1", 90.0), signed(stranger)]})
    with pytest.raises(ValueError, match="does not match"):  # signed for other bytes
        applier.desired_settings({"model": MODEL, "versions": [v("v1", 90.0), signed(ci, "cd" * 32)]})
    assert deployed == []


async def test_only_a_desired_state_signed_by_the_service_or_an_operator_is_applied(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.inference.serving import state_record

    trust = tmp_path / "trust.yaml"
    service, ops, jane = (Signer(n, Ed25519PrivateKey.generate()) for n in ("argus-retraining", "ops", "jane"))
    for s, roles in ((service, ["service"]), (ops, ["operator"]), (jane, ["approver"])):
        add_trusted(trust, s.name, s.key.public_key(), roles)
    deployed: list[Any] = []
    settings = InferenceSettings(
        versions=(ModelVersion(version="v1", weight=100.0),),
        governance=GovernanceSettings(trust_file=trust),
        allow_unsigned_models=True,
    )
    producer = Producer()
    applier = ServingStateApplier(settings, producer, deploy=deployed.append)
    codec = get_codec("serving-state")

    def desired(revision: int, signer: Signer | None) -> dict[str, Any]:
        rec = state_record(MODEL, revision, "desired", [v("v1", 100.0)], "argus-retraining", "weights")
        rec = codec.decode_plain(codec.encode(rec))  # every field of the contract, as ServingRollout signs it
        rec = signer.sign_record(codec.name, codec.version, rec) if signer else rec
        return codec.decode_plain(codec.encode(rec))  # as the topic carries it

    for revision, signer, why in ((1, None, "not signed"), (2, jane, "operator/service role")):
        await applier.apply(desired(revision, signer))
        answer = producer.sent[-1]
        assert answer["status"] == "failed" and "refused" in answer["comment"] and why in answer["comment"], answer
    forged = desired(3, service) | {"versions": [v("v1", 100.0), v("evil", 50.0)]}  # altered after signing
    await applier.apply(forged)
    assert "does not match the record" in producer.sent[-1]["comment"]
    assert deployed == []  # nothing reached Serve
    await applier.apply(desired(4, service))
    await applier.apply(desired(5, ops))
    assert [r["status"] for r in producer.sent[-2:]] == ["applied", "applied"] and len(deployed) == 2


async def test_each_served_model_has_its_own_states_and_a_canary_on_one_leaves_the_other(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.inference.serving import state_record
    from services.inference.settings import ServedModel

    trust = tmp_path / "trust.yaml"
    service = Signer("argus-retraining", Ed25519PrivateKey.generate())
    add_trusted(trust, service.name, service.key.public_key(), ["service"])
    terse = ServedModel(name="smollm2-terse", system_prompt="Answer with one word.", max_tokens=3)
    settings = InferenceSettings(
        versions=(ModelVersion(version="v1", weight=100.0, max_replicas=2),),
        models=(terse,),
        governance=GovernanceSettings(trust_file=trust),
        allow_unsigned_models=True,
    )
    producer, deployed = Producer(), []
    applier = ServingStateApplier(settings, producer, deploy=deployed.append)
    codec = get_codec("serving-state")

    def desired(model: str, revision: int, versions: list[dict[str, Any]]) -> dict[str, Any]:
        rec = codec.decode_plain(
            codec.encode(state_record(model, revision, "desired", versions, "argus-retraining", ""))
        )
        return codec.decode_plain(codec.encode(service.sign_record(codec.name, codec.version, rec)))

    # start-up with nothing desired: each model's state, as deployed from the settings
    await applier.on_caught_up()
    assert [(r["model"], r["revision"], r["status"]) for r in producer.sent] == [
        (MODEL, 0, "applied"),
        ("smollm2-terse", 0, "applied"),
    ]
    applier.reader.caught_up.set()
    # a canary on the second model: its versions change, the first's stay (tunables too)
    await applier.on_record("smollm2-terse", desired("smollm2-terse", 1, [v("v1", 90.0), v("v2", 10.0)]))
    (now,) = deployed
    assert [(x.version, x.weight) for x in now.models[0].versions] == [("v1", 90.0), ("v2", 10.0)]
    assert now.models[0].system_prompt == "Answer with one word." and now.models[0].max_tokens == 3
    assert now.versions == settings.versions and now.routing_config()["weights"] == {"v1": 100.0}
    assert (producer.sent[-1]["model"], producer.sent[-1]["revision"], producer.sent[-1]["status"]) == (
        "smollm2-terse",
        1,
        "applied",
    )
    # revisions are per model: revision 1 of the first model is not stale
    await applier.on_record(MODEL, desired(MODEL, 1, [v("v1", 100.0)]))
    assert producer.sent[-1]["model"] == MODEL and producer.sent[-1]["status"] == "applied"
    assert [(x.version, x.weight) for x in deployed[-1].models[0].versions] == [("v1", 90.0), ("v2", 10.0)]
    assert applier.applied_revision == {"smollm2-terse": 1, MODEL: 1}
    # a model this service does not serve: not applied, not answered (another service's)
    sent = len(producer.sent)
    await applier.on_record("gpt-4o", desired("gpt-4o", 1, [v("v1", 100.0)]))
    assert len(producer.sent) == sent and len(deployed) == 2
