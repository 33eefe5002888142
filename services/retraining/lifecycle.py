"""Retraining triggers as pure state: the lifecycle (what may follow what), the book of
triggers folded from their transition records, and the policy engine that turns
evidence into proposals with minimum evidence, cooldown and dedup.

    proposed -> awaiting_approval -> approved -> dispatched -> candidate_registered
             -> validated -> canary -> promoted | rolled_back
                                   \\-> rejected      \\-> validation_failed
    (validated -> validation_failed too, when an operator retired the candidate first)

Every transition is one ``RetrainingTrigger`` record (``sequence`` +1) on
``argus.retraining.triggers``, keyed by trigger id, so the topic is the trigger's
history; the latest record of each trigger is also on the compacted
``argus.retraining.state``, so the book is rebuilt after a restart even when retention
has deleted the oldest part of that history (:meth:`TriggerBook.restore`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from services.common.labels import matches_all
from services.retraining.config import SEVERITY_RANK, Policy, RetrainingConfig

NEXT: dict[str, set[str]] = {
    "proposed": {"awaiting_approval"},
    "awaiting_approval": {"approved", "rejected"},
    "approved": {"dispatched"},
    "dispatched": {"candidate_registered"},
    "candidate_registered": {"validated", "validation_failed"},
    "validated": {"canary", "validation_failed"},  # failed: its candidate was retired before the canary
    "canary": {"promoted", "rolled_back"},
}
TERMINAL = {"rejected", "validation_failed", "promoted", "rolled_back"}


class TransitionError(ValueError):
    """A transition the lifecycle does not allow (e.g. approving a rejected trigger)."""


@dataclass
class Trigger:
    trigger_id: str
    model: str
    model_version: str
    policy: str
    reason: str
    state: str
    sequence: int
    created_at: float
    updated_at: float
    drift_event_ids: list[str] = field(default_factory=list)
    alert_event_ids: list[str] = field(default_factory=list)
    dataset_spec: dict[str, str] = field(default_factory=dict)
    candidate_version: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.state not in TERMINAL


def _seconds(v: Any) -> float:
    return v.timestamp() if hasattr(v, "timestamp") else float(v) / 1000.0


def _trigger_from(rec: dict[str, Any], at: float) -> Trigger:
    """A trigger as its record leaves it (the proposal, or a restored latest record)."""
    return Trigger(
        str(rec["trigger_id"]),
        rec["model"],
        rec["model_version"],
        rec["policy"],
        rec["reason"],
        rec["state"],
        rec["sequence"],
        at,
        at,
        list(rec.get("drift_event_ids") or []),
        list(rec.get("alert_event_ids") or []),
        dict(rec.get("dataset_spec") or {}),
        rec.get("candidate_version"),
    )


def _add_history(t: Trigger, rec: dict[str, Any], at: float) -> None:
    entry = {
        "sequence": rec["sequence"],
        "state": rec["state"],
        "actor": rec.get("actor"),
        "comment": rec.get("comment"),
    }
    t.history.append(entry | {"at": at})


class TriggerBook:
    def __init__(self) -> None:
        self.triggers: dict[str, Trigger] = {}

    def apply(self, rec: dict[str, Any]) -> Trigger:
        """Fold one transition record in; raises TransitionError when it does not follow."""
        tid = str(rec["trigger_id"])
        at = _seconds(rec["occurred_at"])
        t = self.triggers.get(tid)
        if t is None:
            if rec["state"] != "proposed" or rec["sequence"] != 1:
                raise TransitionError(
                    f"trigger {tid}: first record must be sequence 1 'proposed', got {rec['sequence']} {rec['state']!r}"
                )
            t = self.triggers[tid] = _trigger_from(rec, at)
        else:
            if rec["sequence"] <= t.sequence:
                if rec["sequence"] == 1:  # restored from a snapshot first: the proposal's time is the raise time
                    t.created_at = min(t.created_at, at)
                return t  # a replayed record: already applied
            if rec["sequence"] != t.sequence + 1 or rec["state"] not in NEXT.get(t.state, set()):
                raise TransitionError(
                    f"trigger {tid}: {t.state!r} (sequence {t.sequence}) cannot become "
                    f"{rec['state']!r} (sequence {rec['sequence']})"
                )
            t.state, t.sequence, t.updated_at = rec["state"], rec["sequence"], at
            if rec.get("dataset_spec"):
                t.dataset_spec = dict(rec["dataset_spec"])
            if rec.get("candidate_version"):
                t.candidate_version = rec["candidate_version"]
        _add_history(t, rec, at)
        return t

    def restore(self, rec: dict[str, Any]) -> Trigger | None:
        """Fold in a trigger's latest transition from the compacted state topic: the
        trigger as that record leaves it, whatever history the triggers topic still
        holds (its oldest records may be gone with retention). ``None`` when the book
        already knows the trigger at that sequence or later."""
        tid = str(rec["trigger_id"])
        at = _seconds(rec["occurred_at"])
        t = self.triggers.get(tid)
        if t is not None and rec["sequence"] <= t.sequence:
            return None
        if rec["state"] not in NEXT and rec["state"] not in TERMINAL:
            raise TransitionError(f"trigger {tid}: unknown state {rec['state']!r}")
        if t is None:
            t = self.triggers[tid] = _trigger_from(rec, at)
        else:
            t.state, t.sequence, t.updated_at = rec["state"], rec["sequence"], at
            t.dataset_spec = dict(rec.get("dataset_spec") or t.dataset_spec)
            t.candidate_version = rec.get("candidate_version") or t.candidate_version
        _add_history(t, rec, at)
        return t

    def next_record(
        self,
        trigger_id: str,
        state: str,
        actor: str,
        comment: str | None = None,
        now: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """The record of a transition of an existing trigger (checked, not applied)."""
        t = self.triggers.get(trigger_id)
        if t is None:
            raise TransitionError(f"no trigger {trigger_id}")
        if state not in NEXT.get(t.state, set()):
            raise TransitionError(
                f"trigger {trigger_id} is {t.state!r}: it cannot become {state!r} "
                f"(allowed: {', '.join(sorted(NEXT.get(t.state, set()))) or 'nothing, it is closed'})"
            )
        return record(
            t.trigger_id,
            t.sequence + 1,
            t.model,
            t.model_version,
            t.policy,
            state,
            t.reason,
            actor,
            comment,
            now,
            drift_event_ids=t.drift_event_ids,
            alert_event_ids=t.alert_event_ids,
            dataset_spec=fields.get("dataset_spec", t.dataset_spec),
            candidate_version=fields.get("candidate_version", t.candidate_version),
        )

    def find(self, prefix: str) -> Trigger:
        hits = [t for tid, t in self.triggers.items() if tid.startswith(prefix)]
        if len(hits) != 1:
            raise TransitionError(f"{'no' if not hits else 'more than one'} trigger matches {prefix!r}")
        return hits[0]

    def open_for(self, policy: str, model: str, version: str) -> Trigger | None:
        return next(
            (
                t
                for t in self.triggers.values()
                if t.open and t.policy == policy and t.model == model and t.model_version == version
            ),
            None,
        )

    def last_raised(self, policy: str, model: str, version: str) -> float | None:
        times = [
            t.created_at
            for t in self.triggers.values()
            if t.policy == policy and t.model == model and t.model_version == version
        ]
        return max(times) if times else None


def record(
    trigger_id: str,
    sequence: int,
    model: str,
    version: str,
    policy: str,
    state: str,
    reason: str,
    actor: str | None,
    comment: str | None = None,
    now: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "trigger_id": trigger_id,
        "sequence": sequence,
        "model": model,
        "model_version": version,
        "policy": policy,
        "state": state,
        "reason": reason,
        "actor": actor,
        "comment": comment,
        "drift_event_ids": list(fields.get("drift_event_ids") or []),
        "alert_event_ids": list(fields.get("alert_event_ids") or []),
        "dataset_spec": {k: str(v) for k, v in (fields.get("dataset_spec") or {}).items()},
        "candidate_version": fields.get("candidate_version"),
        "occurred_at": int((now if now is not None else time.time()) * 1000),
        "signature": None,  # signed by whoever publishes it (services.common.governance.Signer)
    }


@dataclass
class Proposal:
    policy: Policy
    model: str
    model_version: str
    reason: str
    drift_event_ids: list[str] = field(default_factory=list)
    alert_event_ids: list[str] = field(default_factory=list)


class PolicyEngine:
    """Evidence -> proposals. One episode raises one trigger: nothing while a trigger of
    the same (policy, model, version) is open, nor within the policy's cooldown."""

    def __init__(self, config: RetrainingConfig, book: TriggerBook) -> None:
        self.config = config
        self.book = book
        self.episodes: dict[tuple[str, str, str], list[dict[str, Any]]] = {}

    def _allowed(self, p: Policy, model: str, version: str, now: float) -> bool:
        if self.book.open_for(p.name, model, version) is not None:
            return False
        last = self.book.last_raised(p.name, model, version)
        return last is None or now - last >= p.cooldown

    def on_drift(self, ev: dict[str, Any], now: float) -> list[Proposal]:
        if ev.get("status") == "ended":
            return []  # the stream is back at its reference: evidence against retraining, not for it
        out = []
        # fairness findings (detector fairness.*) are evidence for `fairness` policies only
        fairness = str(ev.get("detector") or "").startswith("fairness.")
        for p in self.config.policies:
            if p.kind not in ("drift", "fairness") or (p.kind == "fairness") != fairness:
                continue
            if not p.covers(ev["model"], ev["model_version"]):
                continue
            if p.features and ev["feature"] not in p.features:
                continue
            if SEVERITY_RANK[ev["severity"]] < SEVERITY_RANK[p.min_severity]:
                continue
            key = (p.name, ev["model"], ev["model_version"])
            episode = [e for e in self.episodes.get(key, []) if now - e["at"] <= max(p.sustained_for, 0) + 3600]
            episode.append({"id": str(ev["event_id"]), "at": now, "feature": ev["feature"], "severity": ev["severity"]})
            self.episodes[key] = episode
            if not self._allowed(p, *key[1:], now):
                del self.episodes[key]  # evidence of the episode a trigger already covers (open or cooling down)
                continue
            span = episode[-1]["at"] - episode[0]["at"]
            if len(episode) < p.min_events or span < p.sustained_for:
                continue
            features = sorted({e["feature"] for e in episode})
            worst = max((e["severity"] for e in episode), key=SEVERITY_RANK.get)
            out.append(
                Proposal(
                    p,
                    ev["model"],
                    ev["model_version"],
                    f"{len(episode)} {p.kind} event(s) on {', '.join(features)} ({worst}) over {span:.0f}s",
                    drift_event_ids=[e["id"] for e in episode],
                )
            )
            del self.episodes[key]
        return out

    def on_alert(self, alert: dict[str, Any], now: float) -> list[Proposal]:
        if alert["status"] != "firing" or alert.get("receiver"):
            return []  # state changes only, not each notification of the same alert
        labels = alert["labels"]
        out = []
        for p in self.config.policies:
            if p.kind != "alert" or not matches_all(p.matchers, labels):
                continue
            model, version = labels.get("model", "*"), labels.get("model_version", "*")
            if not p.covers(model, version) or not self._allowed(p, model, version, now):
                continue
            out.append(
                Proposal(
                    p,
                    model,
                    version,
                    f"alert {alert['rule']} firing ({alert['severity']}): "
                    f"{alert['annotations'].get('summary', '')}".strip(),
                    alert_event_ids=[str(alert["event_id"])],
                )
            )
        return out

    def due_schedules(self, now: float) -> list[Proposal]:
        out = []
        for p in self.config.policies:
            if p.kind == "schedule" and p.interval and self._allowed(p, p.model, p.model_version, now):
                last = self.book.last_raised(p.name, p.model, p.model_version)
                if last is None or now - last >= p.interval:
                    out.append(Proposal(p, p.model, p.model_version, f"scheduled every {p.interval:.0f}s"))
        return out

    def on_metric(self, p: Policy, value: float, now: float) -> Proposal | None:
        ops = {
            ">": value > p.threshold,
            ">=": value >= p.threshold,
            "<": value < p.threshold,
            "<=": value <= p.threshold,
        }
        if not ops[p.op] or not self._allowed(p, p.model, p.model_version, now):
            return None
        return Proposal(p, p.model, p.model_version, f"metric {value:.4g} {p.op} {p.threshold:g}")
