"""Extract: what the alerting engine learns from each source record (pure functions,
tested without a broker), and the per-worker memory that labels feedback with its model.

Responses, feedback, drift events and dead letters become :class:`Signal`s; silence
records become engine commands (a bad matcher raises :class:`MatcherError`, which the
extract agent dead-letters)."""

from __future__ import annotations

import json
import time
from typing import Any

from services.alerting.engine import Silence
from services.alerting.windows import Signal
from services.common.labels import MatcherError
from services.common.lru import RecentMap

SOURCES = ("inference-responses", "feedback", "drift-events", "alert-silences")
_NEGATIVE_LABELS = {"bad", "incorrect", "harmful", "unhelpful", "wrong"}


def guard_values(r: dict[str, Any]) -> dict[str, float | None]:
    """What the guard-rail verdict of an answer (InferenceResponse v2) says, for the rules:
    blocked, harmful (the offensive-language rail triggered), a guard failed or overran,
    an injection attempt at input. ``None`` where no rail ran (older producers)."""
    action = r.get("guard_action")
    if action is None:
        return {"blocked": None, "harmful": None, "guard_error": None, "injection": None}
    try:
        rails = json.loads(r.get("guard_verdict") or "{}").get("rails") or []
        rails = [x for x in rails if isinstance(x, dict)]
    except (ValueError, AttributeError):  # a verdict that is not the documented JSON: counted as a guard error
        rails = [{"error": "unreadable verdict"}]
    return {
        "blocked": float(action == "block"),
        "harmful": float(any(x.get("rail") == "output.offensive" and x.get("triggered") is True for x in rails)),
        "guard_error": float(any(x.get("error") for x in rails)),
        "injection": float(any(x.get("rail") == "input.injection" and x.get("triggered") is True for x in rails)),
    }


def response_signal(r: dict[str, Any], now: float) -> Signal:
    return Signal(
        "responses",
        now,
        {"model": r["model"], "model_version": r["model_version"], "tenant": r["tenant"]},
        {
            "error": 0.0 if r["status"] == "ok" else 1.0,
            "latency_ms": float(r["latency_ms"]),
            "tokens": float((r.get("input_tokens") or 0) + (r.get("output_tokens") or 0)),
            "confidence": r.get("mean_logprob"),
            "cost": r.get("cost"),
            **guard_values(r),
        },
    )


def is_negative(f: dict[str, Any]) -> bool:
    score, kind = f.get("score"), f.get("kind")
    if kind == "thumbs" and score is not None:
        return score < 0.5
    if kind == "rating" and score is not None:
        return score <= 2
    return (f.get("label") or "").lower() in _NEGATIVE_LABELS


def feedback_signal(f: dict[str, Any], model: tuple[str, str] | None, now: float) -> Signal:
    m, v = model or ("unknown", "unknown")
    return Signal(
        "feedback",
        now,
        {"model": m, "model_version": v, "tenant": f["tenant"], "source": f.get("source") or ""},
        {"negative": 1.0 if is_negative(f) else 0.0},
    )


def drift_signal(d: dict[str, Any], now: float) -> Signal:
    return Signal(
        "drift",
        now,
        {
            "model": d["model"],
            "model_version": d["model_version"],
            "feature": d["feature"],
            "detector": d["detector"],
            "drift_severity": d["severity"],
            # v2: started | ended (v1 events were all starts); rules count starts by default
            "drift_status": d.get("status") or "started",
        },
        {"statistic": float(d["statistic"]), "threshold": float(d["threshold"])},
    )


def dead_letter_signal(d: dict[str, Any] | None, topic: str, now: float) -> Signal:
    if d is None:  # even an undecodable dead letter is a dead letter
        return Signal(
            "dead_letters",
            now,
            {
                "original_topic": topic.removesuffix(".dlq"),
                "service": "",
                "error_type": "undecodable",
                "consumer_group": "",
            },
            {},
        )
    return Signal(
        "dead_letters",
        now,
        {
            "original_topic": d["original_topic"],
            "service": d["service"],
            "error_type": d["error_type"],
            "consumer_group": d["consumer_group"],
        },
        {},
    )


def _seconds(v: Any) -> float:
    """A timestamp-millis field as seconds (epoch ms, or a datetime from another writer version)."""
    return v.timestamp() if hasattr(v, "timestamp") else v / 1000


def silence_from_record(s: dict[str, Any]) -> dict[str, Any]:
    """A Silence record as the engine's JSON (matchers checked: a bad one raises MatcherError)."""
    out = {
        "id": str(s["silence_id"]),
        "action": s["action"],
        "matchers": list(s["matchers"]),
        "starts_at": _seconds(s["starts_at"]),
        "ends_at": _seconds(s["ends_at"]),
        "created_by": s["created_by"],
        "comment": s["comment"],
    }
    if out["action"] != "expire":
        if not out["matchers"]:
            raise MatcherError("a silence needs at least one matcher (it would mute every alert)")
        Silence(out["id"], out["matchers"], 0, 0, "", "").parsed()
    return out


class SilenceGate:
    """Only silences their author signed (a trusted key with the operator or approver role,
    trusted under the name in ``created_by``) are applied; the trust file is read when the
    first silence arrives and re-read when it changes. ``check`` raises
    :class:`~services.common.governance.Refused` (the record is dead-lettered)."""

    def __init__(self, trust_file: Any) -> None:
        self.trust_file = trust_file
        self._gate: Any = None

    def check(self, record: dict[str, Any]) -> str:
        from services.common.governance import GovernanceGate, Refused, Trust
        from services.common.signing import SignatureError

        if self._gate is None:
            try:
                self._gate = GovernanceGate(Trust(self.trust_file), check_replays=False)
            except SignatureError as exc:
                raise Refused("no_trust", str(exc)) from None
        return self._gate.check("alert-silences", record).name


class SignalExtractor:
    """Source record -> signal (or silence command). Feedback and responses are both keyed
    by request_id with the same partition count, so the response a feedback item is about
    was seen by this worker: it remembers the last ``recent`` responses' models.

    >>> SignalExtractor().signal("drift-events", {...})   # doctest: +SKIP
    """

    def __init__(self, recent: int = 200_000) -> None:
        self.recent_models = RecentMap(recent)  # request_id -> (model, version)

    def signal(self, key: str, record: dict[str, Any]) -> Signal | dict[str, Any]:
        now = time.time()
        if key == "inference-responses":
            self.recent_models.put(record["request_id"], (record["model"], record["model_version"]))
            return response_signal(record, now)
        if key == "feedback":
            return feedback_signal(record, self.recent_models.get(record["request_id"]), now)
        if key == "drift-events":
            return drift_signal(record, now)
        if key == "alert-silences":
            return {"silence": silence_from_record(record)}  # a bad matcher raises MatcherError
        raise KeyError(f"alerting does not read {key}")
