"""One stream's detectors (pure state, checkpointed as JSON by :mod:`services.drift.state`): every numeric
feature gets a mean-shift CUSUM and a windowed KS test, every categorical feature a
windowed chi-squared test, every binary feature a rate CUSUM (one- or two-sided per
feature, :data:`RATE_SIDES`). Alarms become DriftEvent records: ``started`` when a
change is found (with its located change point and direction), ``ended`` when the
detector sees the stream back at its reference."""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any

from services.drift.detectors import Alarm, CusumNumeric, CusumRate, WarmupADWIN, WindowChi2, WindowKS, WindowMMD
from services.drift.features import Features

EVENT_NAMESPACE = uuid.UUID("6f1c2a8e-0b7d-4c55-9a43-1d2e3f405162")
# Which way a binary rate is watched: errors and refusals matter when they rise; negative
# feedback both ways (a fall after a release is news too, and severity says which way).
# The drift settings' ``rate_sides`` override these per feature.
RATE_SIDES = {"negative_feedback": "both"}
DEFAULT_RATE_SIDE = "up"
# Features seen as a sample (one embedding per sampled prompt, a few per second): their
# mean CUSUM pins a smaller reference, with its own calibrated threshold.
SMALL_REFERENCE = {"prompt_embedding_distance"}
SMALL_REFERENCE_SIZE = 1000


class StreamMonitor:
    def __init__(self, stream: str, calibration: dict[str, Any]) -> None:
        self.stream = stream
        self.cal = calibration["detectors"]
        self.window = calibration["window"]
        self.rate_sides = RATE_SIDES | dict(calibration.get("rate_sides") or {})
        self.position = 0
        self.detectors: dict[str, list[Any]] = {}
        self.kinds: dict[str, str] = {}  # feature -> numeric | categorical | binary | embedding
        self.recent_ids: deque[str] = deque(maxlen=5)
        self.alarms = 0
        # feature -> detector whose episode is open: one change of a feature is one event,
        # whichever of its detectors sees it first; the others' alarms during that episode
        # (and their ends) are not published
        self.open: dict[str, str] = {}

    def new_detectors(self, feature: str, kind: Any, semantic: Any = None) -> list[Any]:
        """Fresh detectors of a feature of ``kind``, as the current calibration sets them."""
        if kind == "numeric":
            if feature in SMALL_REFERENCE:
                cusum = CusumNumeric(self.cal["mean_shift_small"]["threshold"], reference_size=SMALL_REFERENCE_SIZE)
            else:
                cusum = CusumNumeric(self.cal["mean_shift"]["threshold"])
            warmup = WarmupADWIN(self.cal["adwin_warmup"]["delta"])
            return [cusum, WindowKS(self.cal["ks"]["threshold"], **self.window), warmup]
        if kind == "categorical":
            return [WindowChi2(self.cal["chi2"]["threshold"], **self.window)]
        if kind == "binary":
            side = self.rate_sides.get(feature, DEFAULT_RATE_SIDE)
            return [CusumRate(self.cal["rate_shift"]["threshold"], sides=side)]
        if kind == "embedding" and semantic is not None:
            return [
                WindowMMD(semantic.reference_size, semantic.window, semantic.step, semantic.permutations, semantic.dims)
            ]
        raise ValueError(f"feature {feature!r}: no detectors for kind {kind!r}")

    def _for(self, feature: str, kind: str, semantic: Any = None) -> list[Any]:
        if feature not in self.detectors:
            self.detectors[feature] = self.new_detectors(feature, kind, semantic)
            self.kinds[feature] = kind
        return self.detectors[feature]

    def _numeric(self, feature: str) -> list[Any]:
        return self._for(feature, "numeric")

    def _categorical(self, feature: str) -> list[Any]:
        return self._for(feature, "categorical")

    def _binary(self, feature: str) -> list[Any]:
        return self._for(feature, "binary")

    def observe_embedding(
        self, vector: Any, request_id: str, semantic: Any, position: int | None = None
    ) -> list[Alarm]:
        """A prompt embedding (a sample of the stream's prompts): the multivariate MMD
        test, and, once its reference is pinned, the embedding's distance to the
        reference centroid as a numeric feature (mean-shift CUSUM + windowed KS), which finds
        a new, far-away topic sooner than a windowed test can."""
        pos = self.position if position is None else position
        self._for("prompt_embedding", "embedding", semantic)
        if request_id:
            self.recent_ids.append(request_id)
        mmd: WindowMMD = self.detectors["prompt_embedding"][0]
        pinned = mmd.pinned
        alarms = [a for a in [mmd.update(vector, "prompt_embedding", pos)] if a is not None]
        if pinned:
            dist = mmd.distance_to_reference(vector)
            dets = self._numeric("prompt_embedding_distance")
            alarms += [a for d in dets if (a := d.update(dist, "prompt_embedding_distance", pos)) is not None]
            self._release_retired("prompt_embedding_distance", dets)
        alarms = self._episodes(alarms)
        for a in alarms:
            a.params["embeddings_seen"] = str(mmd.seen)
        self.alarms += len(alarms)
        return alarms

    def _release_retired(self, feature: str, dets: list[Any]) -> None:
        """A warm-up detector that retired gives up the episode it holds (it cannot end it)."""
        owner = self.open.get(feature)
        if owner == WarmupADWIN.name and any(isinstance(d, WarmupADWIN) and d.retired for d in dets):
            del self.open[feature]

    def _episodes(self, alarms: list[Alarm]) -> list[Alarm]:
        """Keep one episode per feature: a start while another detector of the feature
        holds an open episode is dropped, and only the owner's end closes it."""
        out = []
        for a in alarms:
            owner = self.open.get(a.feature)
            if a.status == "started" and owner is None:
                self.open[a.feature] = a.detector
                out.append(a)
            elif a.status == "ended" and owner == a.detector:
                del self.open[a.feature]
                out.append(a)
        return out

    def reset_reference(self) -> None:
        """Pin a new reference (after a deliberate change, e.g. a new model version)."""
        for dets in self.detectors.values():
            for d in dets:
                d.reset_reference()
        self.open.clear()

    def observe(self, f: Features) -> list[Alarm]:
        self.position += 1
        if f.request_id:
            self.recent_ids.append(f.request_id)
        alarms: list[Alarm] = []
        for name, x in f.numeric.items():
            dets = self._numeric(name)
            alarms += [a for d in dets if (a := d.update(x, name, self.position)) is not None]
            self._release_retired(name, dets)
        for name, c in f.categorical.items():
            alarms += [a for d in self._categorical(name) if (a := d.update(c, name, self.position)) is not None]
        for name, b in f.binary.items():
            alarms += [a for d in self._binary(name) if (a := d.update(b, name, self.position)) is not None]
        alarms = self._episodes(alarms)
        self.alarms += len(alarms)
        return alarms

    def episode_id(self, alarm: Alarm) -> str:
        """The id of the ``started`` event of the alarm's episode."""
        return str(uuid.uuid5(EVENT_NAMESPACE, f"{self.stream}|{alarm.feature}|{alarm.detector}|{alarm.position}"))

    def drift_event(self, alarm: Alarm, detected_at_ms: int | None = None) -> dict[str, Any]:
        """The DriftEvent record (v2); its id is derived from the change (stream, feature,
        detector, located position, and the end's position for an ``ended`` event), so a
        replay after a crash yields the same id. An ``ended`` event names the episode it
        closes by the id of its ``started`` event."""
        model, _, version = self.stream.partition("|")
        episode = self.episode_id(alarm)
        event_id = episode
        if alarm.status == "ended":
            event_id = str(uuid.uuid5(EVENT_NAMESPACE, f"{episode}|ended|{alarm.ended_at}"))
        return {
            "event_id": event_id,
            "detected_at": detected_at_ms or int(time.time() * 1000),
            "model": model,
            "model_version": version,
            "feature": alarm.feature,
            "detector": alarm.detector,
            "statistic": float(alarm.statistic),
            "threshold": float(alarm.threshold),
            "p_value": alarm.p_value,
            "severity": alarm.severity,
            "reference_window_size": alarm.reference_size,
            "current_window_size": alarm.current_size,
            "reference_summary": {k: float(v) for k, v in alarm.reference_summary.items()},
            "current_summary": {k: float(v) for k, v in alarm.current_summary.items()},
            "change_offset": max(alarm.position, 0),
            "change_time": None,
            "example_request_ids": list(self.recent_ids),
            "detector_params": dict(alarm.params) | {"detected_at_position": str(self.position)},
            "status": alarm.status,
            "direction": alarm.direction or None,
            "episode_id": episode,
        }
