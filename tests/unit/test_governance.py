"""Signed governance records: what is accepted and each way a record is refused."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.governance import (
    GovernanceGate,
    Refused,
    Signer,
    Trust,
    add_trusted,
    check_artifact,
    ensure_identity,
    revoke_trusted,
)
from services.common.registry import get_codec
from services.common.signing import SignatureError
from services.retraining.lifecycle import record
from services.retraining.registry import version_record, with_status

TRIGGERS, REGISTRY = get_codec("retraining-triggers"), get_codec("model-registry")


@pytest.fixture
def world(tmp_path: Path):  # noqa: ANN201
    trust = tmp_path / "trust.yaml"
    people = {}
    for name, roles in (("jane", ["approver"]), ("ci", ["pipeline"]), ("svc", ["service"]), ("ops", ["operator"])):
        s = Signer(name, Ed25519PrivateKey.generate())
        add_trusted(trust, name, s.key.public_key(), roles)
        people[name] = s
    return trust, people, GovernanceGate(Trust(trust))


def approval(actor: str = "jane", trigger: str | None = None) -> dict:
    return record(trigger or str(uuid.uuid4()), 3, "m", "v1", "p", "approved", "drift", actor, "ok")


def signed(s: Signer, rec: dict, codec=TRIGGERS) -> dict:  # noqa: ANN001
    return s.sign_record(codec.name, codec.version, rec)


def through_the_wire(rec: dict, codec=TRIGGERS) -> dict:  # noqa: ANN001
    return codec.decode_plain(codec.encode(rec))


def test_a_signed_approval_survives_avro_and_is_accepted(world) -> None:  # noqa: ANN001
    _, p, gate = world
    rec = through_the_wire(signed(p["jane"], approval()))
    assert gate.check("retraining-triggers", rec).name == "jane"
    assert rec["actor"] == "jane" and rec["signature"]["fields_version"] == TRIGGERS.version


@pytest.mark.parametrize(
    "forge, kind",
    [
        (lambda p: approval(), "unsigned"),
        (lambda p: signed(p["ci"], approval("ci")), "wrong_role"),
        (lambda p: {**signed(p["jane"], approval()), "comment": "edited after signing"}, "bad_signature"),
        (lambda p: {**signed(p["jane"], approval()), "trigger_id": str(uuid.uuid4())}, "bad_signature"),
        (lambda p: {**signed(p["jane"], approval()), "actor": "ops"}, "wrong_actor"),
        (lambda p: signed(Signer("jane", Ed25519PrivateKey.generate()), approval()), "untrusted_key"),
        (lambda p: signed(p["jane"], {**approval(), "state": "validated"}), "wrong_role"),
        (
            lambda p: {
                **signed(p["jane"], approval()),
                "signature": {"alg": "Ed25519", "key_id": "x", "signed_at": 0, "fields_version": 2, "value": "!"},
            },
            "bad_signature",
        ),
    ],
)
def test_forged_trigger_records_are_refused_with_the_reason(world, forge, kind: str) -> None:  # noqa: ANN001
    _, p, gate = world
    with pytest.raises(Refused) as err:
        gate.check("retraining-triggers", through_the_wire(forge(p)))
    assert err.value.kind == kind, str(err.value)


def test_a_replayed_record_is_refused(world) -> None:  # noqa: ANN001
    _, p, gate = world
    rec = through_the_wire(signed(p["jane"], approval()))
    gate.check("retraining-triggers", rec)
    with pytest.raises(Refused, match="replayed"):
        gate.check("retraining-triggers", dict(rec))


def test_a_revoked_key_signs_nothing_from_then_on_and_the_file_is_reread(world) -> None:  # noqa: ANN001
    trust, p, gate = world
    before = through_the_wire(p["jane"].sign_record(TRIGGERS.name, TRIGGERS.version, approval(), now=time.time() - 60))
    time.sleep(0.01)
    revoke_trusted(trust, p["jane"].key_id, at=time.time() - 30)
    gate.trust.reload()
    assert gate.check("retraining-triggers", before).name == "jane"  # history signed before stays valid
    with pytest.raises(Refused) as err:
        gate.check("retraining-triggers", through_the_wire(signed(p["jane"], approval())))
    assert err.value.kind == "revoked_key"


def test_a_later_schema_version_does_not_change_what_was_signed(world) -> None:  # noqa: ANN001
    _, p, gate = world
    rec = signed(p["jane"], approval())
    rec["a_field_of_v3"] = "readers fill in defaults"  # not in the signed version's fields
    assert gate.check("retraining-triggers", rec).name == "jane"


def registration(p: dict, status: str = "candidate", signer: str = "ci") -> dict:
    rec = version_record("m", "v2", status, "/m/v2.gguf", "ab" * 32, actor=signer, card={"owner": "ml"})
    rec["artifact_signature"] = p["ci"].sign_artifact("m", "v2", rec["sha256"], rec["card"])
    return signed(p[signer], rec, REGISTRY)


def test_registrations_need_a_pipeline_signed_artifact_and_the_right_role(world) -> None:  # noqa: ANN001
    trust, p, gate = world
    cand = through_the_wire(registration(p), REGISTRY)
    assert gate.check("model-registry", cand).name == "ci"
    # a status change by the service keeps the pipeline's artifact signature
    canary = through_the_wire(signed(p["svc"], with_status(cand, "canary", "svc"), REGISTRY), REGISTRY)
    assert gate.check("model-registry", canary).name == "svc"
    assert check_artifact(Trust(trust), canary).name == "ci"
    with pytest.raises(Refused, match="pipeline"):  # a candidate registered by an approver
        gate.check("model-registry", through_the_wire(registration(p, signer="jane"), REGISTRY))
    swapped = registration(p)
    swapped["sha256"] = "cd" * 32  # another artifact under the same signatures
    with pytest.raises(Refused) as err:
        gate.check("model-registry", swapped)
    assert err.value.kind == "bad_signature"
    unsigned = version_record("m", "v3", "candidate", "/m/v3.gguf", "ab" * 32, actor="ci")
    with pytest.raises(Refused, match="artifact of m/v3 is not signed"):
        gate.check("model-registry", signed(p["ci"], unsigned, REGISTRY))
    assert GovernanceGate(Trust(trust), allow_unsigned_artifacts=True).check(
        "model-registry", signed(p["ci"], unsigned, REGISTRY)
    )
    artifact_by_ops = registration(p)
    artifact_by_ops["artifact_signature"] = p["ops"].sign_artifact("m", "v2", "ab" * 32, {"owner": "ml"})
    with pytest.raises(Refused, match="the artifact of m/v2 needs a key with the pipeline role"):
        gate.check("model-registry", signed(p["ci"], artifact_by_ops, REGISTRY))


def test_trust_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="no trust file"):
        Trust(tmp_path / "missing.yaml")
    bad = tmp_path / "t.yaml"
    bad.write_text("keys:\n  - name: x\n    public_key: AAAA\n    roles: [approver]\n")
    with pytest.raises(SignatureError, match="not an Ed25519 public key"):
        Trust(bad)
    with pytest.raises(SignatureError, match="roles are"):
        add_trusted(tmp_path / "u.yaml", "x", Ed25519PrivateKey.generate().public_key(), ["god"])


def test_ensure_identity_is_idempotent_and_private(tmp_path: Path) -> None:
    first = ensure_identity(tmp_path, "argus-retraining", ["service"])
    assert ensure_identity(tmp_path, "argus-retraining", ["service"]) == first
    assert (tmp_path / "keys" / "argus-retraining.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "trust.yaml").stat().st_mode & 0o777 == 0o600
    [k] = Trust(tmp_path / "trust.yaml").keys()
    assert (k.name, k.key_id, k.roles) == ("argus-retraining", first, frozenset({"service"}))


def test_the_engine_loads_the_bytes_it_hashed_whatever_happens_to_the_file(tmp_path: Path) -> None:
    import hashlib
    import os

    from services.common.llm import ArtifactDigestMismatch, VerifiedArtifact

    model = tmp_path / "model.gguf"
    model.write_bytes(b"A" * 3_000_000)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    with pytest.raises(ArtifactDigestMismatch, match="does not match the registered digest"):
        VerifiedArtifact(model, "0" * 64)
    with VerifiedArtifact(model, digest) as artifact:
        assert artifact.digest == digest
        model.write_bytes(b"B" * 3_000_000)  # rewritten in place after the check
        swapped = tmp_path / "evil.gguf"
        swapped.write_bytes(b"C" * 10)
        os.replace(swapped, model)  # and swapped for another file
        with open(artifact.path, "rb") as loaded:  # what the engine opens
            assert hashlib.sha256(loaded.read()).hexdigest() == digest
        with pytest.raises(PermissionError):
            os.pwrite(artifact.fd, b"x", 0)  # sealed: nothing rewrites it either
    with pytest.raises(ArtifactDigestMismatch):  # the swapped file itself is refused
        VerifiedArtifact(model, digest)


def test_policy_files_load_only_as_an_operator_signed_them(world, tmp_path: Path) -> None:  # noqa: ANN001
    import json

    import yaml

    from services.alerting.settings import AlertingSettings, check_rules
    from services.common.governance import GovernanceSettings, check_policy

    trust, p, _ = world
    rules = tmp_path / "alerting.yaml"
    rules.write_text("rules:\n- {name: HighErrorRate, source: responses, metric: error_rate, threshold: 0.2}\n")
    doc = yaml.safe_load(rules.read_text())
    signed = p["ops"].sign_policy("alerting-rules", doc)
    assert check_policy(Trust(trust), "alerting-rules", doc, signed).name == "ops"
    # formatting is not meaning: the same rules re-indented (a Helm ConfigMap) still verify
    assert check_policy(Trust(trust), "alerting-rules", yaml.safe_load(yaml.safe_dump(doc, indent=4)), signed)
    changed = yaml.safe_load(rules.read_text().replace("0.2", "0.9"))
    for bad, kind, sig in (
        (changed, "bad_signature", signed),  # a threshold raised after signing
        (doc, "wrong_role", p["jane"].sign_policy("alerting-rules", doc)),  # an approver cannot change rules
        (doc, "wrong_actor", signed | {"signer": "jane"}),
        (doc, "bad_signature", p["ops"].sign_policy("retraining-policies", doc)),  # signed for another use
    ):
        with pytest.raises(Refused) as err:
            check_policy(Trust(trust), "alerting-rules", bad, sig)
        assert err.value.kind == kind

    settings = AlertingSettings(  # explicit: the session may allow unsigned rules (the integration tests do)
        config_file=rules, governance=GovernanceSettings(trust_file=trust), allow_unsigned_rules=False
    )
    with pytest.raises(Refused, match="no operator signed this file of alerting-rules"):
        check_rules(settings)
    assert check_rules(settings.model_copy(update={"allow_unsigned_rules": True})).startswith("unsigned alerting-rules")
    (tmp_path / "alerting.yaml.sig").write_text(json.dumps(signed))
    assert check_rules(settings).startswith("alerting-rules signed by ops")
    rules.write_text(rules.read_text().replace("0.2", "0.9"))
    with pytest.raises(Refused, match="changed since it was signed"):
        check_rules(settings.model_copy(update={"allow_unsigned_rules": True}))  # a bad signature is never allowed


def test_the_retraining_service_refuses_to_start_with_unsigned_or_altered_policies(
    world,  # noqa: ANN001
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    import json

    import yaml

    from services.retraining.__main__ import main
    from services.retraining.settings import DEFAULT_CONFIG, RetrainingSettings, check_policies

    trust, p, _ = world
    policies = tmp_path / "retraining.yaml"
    policies.write_text(Path(DEFAULT_CONFIG).read_text())
    monkeypatch.setenv("ARGUS_RETRAINING_CONFIG_FILE", str(policies))
    monkeypatch.setenv("ARGUS_RETRAINING_ALLOW_UNSIGNED_POLICIES", "false")
    monkeypatch.setenv("ARGUS_GOVERNANCE_TRUST_FILE", str(trust))
    assert main([]) == 2 and "no operator signed this file of retraining-policies" in capsys.readouterr().err
    signed = p["ops"].sign_policy("retraining-policies", yaml.safe_load(policies.read_text()))
    (tmp_path / "retraining.yaml.sig").write_text(json.dumps(signed))
    assert check_policies(RetrainingSettings()).startswith("retraining-policies signed by ops")
    policies.write_text(policies.read_text() + "\n# harmless comment\n")  # formatting: still the same policies
    assert check_policies(RetrainingSettings()).startswith("retraining-policies signed by ops")
    doc = yaml.safe_load(policies.read_text())
    doc["policies"] = []  # every policy removed after signing
    policies.write_text(yaml.safe_dump(doc))
    assert main([]) == 2 and "changed since it was signed" in capsys.readouterr().err
