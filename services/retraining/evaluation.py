"""The validation gate: a candidate is evaluated offline on a holdout drawn from
ClickHouse (recent prompts the active version answered), with the same engine the
inference service runs, before it may take any live traffic.

The candidate's artifact is loaded through :class:`LlamaCppEngine`, which checks its
sha256 against the registry's digest first: a tampered artifact fails the gate with
that reason. Metrics: error rate, empty-answer rate, and mean log-probability (the
confidence the drift and alerting services watch) compared with what the active
version logged for the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.retraining.config import Validation


@dataclass
class Evaluation:
    passed: bool
    metrics: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        figures = ", ".join(f"{k}={v:.4g}" for k, v in sorted(self.metrics.items()))
        return ("passed" if self.passed else "failed: " + "; ".join(self.reasons)) + (
            f" ({figures})" if figures else ""
        )


def holdout(client: Any, db: str, model: str, n: int) -> list[dict[str, Any]]:
    """The last ``n`` prompts the model answered successfully in production (any live
    version; a version promoted minutes ago has little history of its own), with the
    confidence they were answered with (text as stored: PII already protected)."""
    rows = client.query(
        f"SELECT q.prompt, r.mean_logprob FROM {db}.inference_requests AS q FINAL "
        f"INNER JOIN {db}.inference_responses AS r FINAL ON r.request_id = q.request_id "
        "WHERE r.model = {m:String} AND NOT r.shadow AND r.status = 'ok' "
        "AND q.prompt IS NOT NULL ORDER BY r.served_at DESC LIMIT {n:UInt32}",
        parameters={"m": model, "n": n},
    ).result_rows
    out = []
    for prompt, confidence in rows:
        last_user = prompt.rsplit("user: ", 1)[-1] if "user: " in prompt else prompt
        out.append({"prompt": last_user.strip(), "confidence": confidence})
    return out


def evaluate(
    artifact: Path,
    sha256: str,
    examples: list[dict[str, Any]],
    gate: Validation,
    system_prompt: str = "You are a helpful, concise assistant. Answer in one or two sentences.",
) -> Evaluation:
    from services.common.llm import ArtifactDigestMismatch, EngineUnavailable, GenerationParams, LlamaCppEngine

    if not examples:
        return Evaluation(False, {}, ["no holdout: the active version has no logged answers in ClickHouse"])
    try:
        engine = LlamaCppEngine(model_path=artifact, sha256=sha256)
    except ArtifactDigestMismatch as exc:
        return Evaluation(False, {}, [f"artifact refused: {exc}"])
    except (EngineUnavailable, OSError, ValueError) as exc:
        return Evaluation(False, {}, [f"artifact cannot be loaded: {exc}"])
    errors = empty = 0
    conf: list[float] = []
    for ex in examples:
        try:
            g = engine.generate(
                GenerationParams(
                    messages=[{"role": "system", "content": system_prompt}, {"role": "user", "content": ex["prompt"]}],
                    max_tokens=gate.max_tokens,
                )
            )
        except (RuntimeError, ValueError):
            errors += 1
            continue
        empty += not g.text.strip()
        if g.mean_logprob is not None:
            conf.append(g.mean_logprob)
    n = len(examples)
    baseline = [ex["confidence"] for ex in examples if ex["confidence"] is not None]
    m = {
        "holdout": float(n),
        "error_rate": errors / n,
        "empty_rate": empty / n,
        "confidence": sum(conf) / len(conf) if conf else float("nan"),
        "active_confidence": sum(baseline) / len(baseline) if baseline else float("nan"),
    }
    reasons = []
    if m["error_rate"] > gate.max_error_rate:
        reasons.append(f"error rate {m['error_rate']:.2%} > {gate.max_error_rate:.2%}")
    if m["empty_rate"] > gate.max_empty_rate:
        reasons.append(f"empty answers {m['empty_rate']:.2%} > {gate.max_empty_rate:.2%}")
    if conf and baseline and m["confidence"] - m["active_confidence"] < gate.min_confidence_delta:
        reasons.append(
            f"confidence {m['confidence']:.3f} is {m['active_confidence'] - m['confidence']:.3f} below the "
            f"active version's {m['active_confidence']:.3f} (allowed {-gate.min_confidence_delta:.3f})"
        )
    if not conf:
        reasons.append("no confidence measured")
    return Evaluation(not reasons, m, reasons)
