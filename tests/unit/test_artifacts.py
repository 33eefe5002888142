"""Artifact digests (files and model directories) and the verified private copy a vLLM
replica loads: what is refused, and that the bytes checked are the bytes loaded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.artifacts import ArtifactRejected, StagedArtifact, artifact_digest
from services.common.governance import Signer, add_trusted, card_digest
from services.common.llm import ArtifactDigestMismatch


def model_dir(root: Path, weights: bytes = b"W" * 5_000_000) -> Path:
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_a_directory_digest_covers_every_file_its_path_and_nothing_else(tmp_path: Path) -> None:
    d = artifact_digest(model_dir(tmp_path / "a"))
    assert d == artifact_digest(model_dir(tmp_path / "b"))  # same files, other place and creation time
    f = tmp_path / "one.gguf"
    f.write_bytes(b"gguf")
    assert artifact_digest(f) == hashlib.sha256(b"gguf").hexdigest()  # a file: its plain sha256

    def changed(edit) -> str:  # noqa: ANN001
        root = model_dir(tmp_path / f"c{len(list(tmp_path.iterdir()))}")
        edit(root)
        return artifact_digest(root)

    assert changed(lambda r: (r / "config.json").write_text('{"model_type": "evil"}')) != d
    assert changed(lambda r: (r / "tokenizer" / "extra.py").write_text("import os")) != d
    assert changed(lambda r: os.rename(r / "config.json", r / "tokenizer" / "config.json")) != d


def test_links_special_files_and_empty_artifacts_are_refused(tmp_path: Path) -> None:
    root = model_dir(tmp_path / "m")
    (root / "weights.bin").symlink_to(tmp_path / "elsewhere.bin")
    with pytest.raises(ArtifactRejected, match="weights.bin is a symbolic link"):
        artifact_digest(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactRejected, match="holds no file"):
        artifact_digest(tmp_path / "empty")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ArtifactRejected, match="neither a file nor a directory"):
        artifact_digest(tmp_path / "fifo")


def test_the_staged_copy_is_what_was_hashed_and_a_mismatch_leaves_nothing(tmp_path: Path) -> None:
    source = model_dir(tmp_path / "store" / "v2")
    digest = artifact_digest(source)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(ArtifactDigestMismatch, match="does not match the registered digest"):
        StagedArtifact(source, "0" * 64, parent=staging)
    assert list(staging.iterdir()) == []
    with StagedArtifact(source, digest, parent=staging) as staged:
        # swapped in the model store after the check: the copy the engine loads is unchanged
        (source / "model.safetensors").write_bytes(b"E" * 10)
        assert artifact_digest(staged.path) == digest == staged.digest
        assert (staged.path / "model.safetensors").read_bytes()[:1] == b"W"
        assert oct(os.stat(staged.root).st_mode & 0o777) == "0o700"
        assert oct(os.stat(staged.path / "config.json").st_mode & 0o777) == "0o400"
    assert list(staging.iterdir()) == []  # removed when the replica stops
    with pytest.raises(ArtifactDigestMismatch):  # the swapped store itself is refused
        StagedArtifact(source, digest, parent=staging)


def test_a_vllm_replica_loads_only_a_signed_verified_copy(tmp_path: Path) -> None:
    from services.inference.gpu import stage_artifact
    from services.inference.verify import ArtifactRefused

    source = model_dir(tmp_path / "v2")
    digest, card = artifact_digest(source), {"owner": "ml"}
    pipeline = Signer("ci", Ed25519PrivateKey.generate())
    approver = Signer("jane", Ed25519PrivateKey.generate())
    trust = tmp_path / "trust.yaml"
    add_trusted(trust, "ci", pipeline.key.public_key(), ["pipeline"])
    add_trusted(trust, "jane", approver.key.public_key(), ["approver"])
    governance = {"allow_unsigned": False, "trust": yaml.safe_load(trust.read_text())}

    def artifact(signer: Signer | None, sha256: str = digest) -> dict:
        return {
            "version": "v2",
            "model_path": str(source),
            "sha256": sha256,
            "card_sha256": card_digest(card),
            "artifact_signature": signer.sign_artifact("m", "v2", sha256, card) if signer else None,
        }

    staged = stage_artifact("m", artifact(pipeline), governance)
    try:
        assert artifact_digest(staged.path) == digest and staged.path != source
    finally:
        staged.close()
    with pytest.raises(ArtifactRefused, match="not signed by a pipeline key"):
        stage_artifact("m", artifact(None), governance)
    with pytest.raises(ArtifactRefused, match="pipeline role"):
        stage_artifact("m", artifact(approver), governance)
    # on KubeRay the config names the trust file every node mounts, and it is read there
    mounted = {"allow_unsigned": False, "trust_file": str(trust)}
    stage_artifact("m", artifact(pipeline), mounted).close()
    with pytest.raises(ArtifactRefused, match="pipeline role"):
        stage_artifact("m", artifact(approver), mounted)
    with pytest.raises(ArtifactRefused, match="cannot read the trust file"):
        stage_artifact("m", artifact(pipeline), {"allow_unsigned": False, "trust_file": str(tmp_path / "absent")})
    (source / "config.json").write_text('{"model_type": "tampered"}')
    with pytest.raises(ArtifactDigestMismatch):  # signed, but the bytes are not the signed ones
        stage_artifact("m", artifact(pipeline), governance)
    unsigned_ok = {"allow_unsigned": True, "trust": None}
    with pytest.raises(ValueError, match="pinned local artifact"):
        stage_artifact("m", {"version": "v2"}, unsigned_ok)


def test_vllm_settings_refuse_an_unpinned_model() -> None:
    from services.inference.settings import EngineSettings, InferenceSettings, ModelVersion

    with pytest.raises(ValueError, match="pinned local artifacts"):
        InferenceSettings(versions=(ModelVersion(version="v1"),), engine=EngineSettings(kind="vllm"))
