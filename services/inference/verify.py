"""What a replica checks before it loads a model version: the pipeline's signature over
the artifact (against the trust file), on every engine; the digest itself is checked on
the bytes loaded (:class:`services.common.llm.VerifiedArtifact` for llama.cpp,
:class:`services.common.artifacts.StagedArtifact` for vLLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.inference.settings import ModelVersion


class ArtifactRefused(RuntimeError):
    """A version whose artifact no trusted pipeline key signed (or signed other bytes)."""


def check_artifact_signature(model_name: str, version: ModelVersion, governance: dict[str, Any]) -> None:
    """Refuse, before loading a byte, a version whose artifact signature is missing (unless
    unsigned models are allowed) or does not verify against the trust file's pipeline
    keys. The digest it covers is then checked on the bytes loaded (VerifiedArtifact)."""
    from services.common.governance import Refused, Trust, check_served_artifact
    from services.common.signing import SignatureError

    where = f"{model_name}/{version.version}"
    if version.artifact_signature is None:
        if governance.get("allow_unsigned"):
            return
        raise ArtifactRefused(
            f"{where}: the artifact is not signed by a pipeline key, and this deployment does not allow unsigned "
            "models (register it with `argus models register`, or set allow_unsigned_models)"
        )
    if not version.sha256:
        raise ArtifactRefused(f"{where}: a signed artifact needs its sha256 (the signature covers it)")
    doc = governance.get("trust")
    if doc is None and governance.get("trust_file"):  # on a Ray cluster (KubeRay): the file every node mounts
        import yaml

        try:
            doc = yaml.safe_load(Path(governance["trust_file"]).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ArtifactRefused(f"{where}: cannot read the trust file {governance['trust_file']}: {exc}") from None
    if not doc:
        raise ArtifactRefused(f"{where}: the artifact is signed but this deployment has no trust file to check it")
    try:
        trust = Trust(None, doc)
    except SignatureError as exc:
        raise ArtifactRefused(f"{where}: {exc}") from None
    try:
        check_served_artifact(
            trust, model_name, version.version, version.sha256, version.card_sha256, version.artifact_signature
        )
    except Refused as exc:
        raise ArtifactRefused(f"refused: {exc}") from None
