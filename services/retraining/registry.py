"""The model registry as a fold of ``ModelVersion`` records on ``argus.models.registry``:
the latest record per (model, version) is its state, the topic (and the ClickHouse
table ``model_registry``) its history. Retired versions stay in it, queryable, and stay
retired: a later record of another status for a retired version is not folded in (the
retraining service refuses and dead-letters it, see ``docs/governance.md``).

Example::

    >>> reg = ModelRegistry()
    >>> reg.apply(version_record("m", "v2", "candidate", "/models/m/v2.gguf", "ab" * 32, actor="ci"))
    >>> reg.get("m", "v2")["status"]
    'candidate'
"""

from __future__ import annotations

import time
import uuid
from typing import Any

STATUSES = ("candidate", "canary", "active", "deprecated", "retired", "rejected")


class ModelRegistry:
    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], dict[str, Any]] = {}

    def apply(self, rec: dict[str, Any]) -> bool:
        """Fold a record in; ``False`` (and nothing changes) for a record that would bring
        a retired version back."""
        if self.retired(rec["model"], rec["version"]) and rec["status"] != "retired":
            return False
        self.versions[(rec["model"], rec["version"])] = dict(rec)
        return True

    def retired(self, model: str, version: str) -> bool:
        rec = self.versions.get((model, version))
        return rec is not None and rec["status"] == "retired"

    def get(self, model: str, version: str) -> dict[str, Any] | None:
        return self.versions.get((model, version))

    def active(self, model: str) -> dict[str, Any] | None:
        live = [r for (m, _), r in self.versions.items() if m == model and r["status"] == "active"]
        return max(live, key=lambda r: epoch_ms(r["occurred_at"])) if live else None

    def candidate_for(self, trigger_id: str) -> dict[str, Any] | None:
        hits = [r for r in self.versions.values() if r.get("trigger_id") == trigger_id and r["status"] == "candidate"]
        return max(hits, key=lambda r: epoch_ms(r["occurred_at"])) if hits else None


def epoch_ms(v: Any) -> float:
    return v.timestamp() * 1000 if hasattr(v, "timestamp") else float(v)


def version_record(
    model: str,
    version: str,
    status: str,
    artifact_uri: str,
    sha256: str,
    *,
    actor: str,
    card: dict[str, str] | None = None,
    parent_version: str | None = None,
    trigger_id: str | None = None,
    comment: str = "",
    now: float | None = None,
    artifact_signature: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An unsigned ``ModelVersion`` record (:class:`services.common.governance.Signer`
    signs it; ``artifact_signature`` is the pipeline's, carried by every status change)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return {
        "event_id": str(uuid.uuid4()),
        "model": model,
        "version": version,
        "status": status,
        "artifact_uri": artifact_uri,
        "sha256": sha256.lower(),
        "card": {k: str(v) for k, v in (card or {}).items()},
        "parent_version": parent_version,
        "trigger_id": trigger_id,
        "actor": actor,
        "comment": comment,
        "occurred_at": int((now if now is not None else time.time()) * 1000),
        "artifact_signature": artifact_signature,
        "signature": None,
    }


def with_status(rec: dict[str, Any], status: str, actor: str, comment: str = "") -> dict[str, Any]:
    """The next record of a version: same artifact and card, a new status."""
    return version_record(
        rec["model"],
        rec["version"],
        status,
        rec["artifact_uri"],
        rec["sha256"],
        actor=actor,
        card=rec.get("card"),
        parent_version=rec.get("parent_version"),
        trigger_id=rec.get("trigger_id"),
        comment=comment,
        artifact_signature=rec.get("artifact_signature"),
    )
