"""The drift service's detection logic as a plain class, apart from faust: unit tests
drive it with a dict as its table (``tests/unit/test_drift_detect.py``); the faust agent
in :mod:`services.drift.app` only feeds it the features topic and sends what it returns.

For each stream (``model|version``) it keeps a :class:`StreamMonitor`, restored from the
stream's checkpoint in ``table`` (typed JSON, never code; one this version cannot read is
refused, logged, and the detectors start afresh), updates it with each features payload
(numeric/categorical/binary features, or a prompt embedding) or control message
(``reset-reference``), and returns the DriftEvent records of the alarms. The monitor is
checkpointed after every alarm and every ``checkpoint_every`` events; a document too
large for one Kafka message is not written (the previous one stays) and said so.
"""

from __future__ import annotations

import json
import time
from collections.abc import MutableMapping
from typing import Any

from services.drift.embeddings import unpack
from services.drift.fairness import FairnessConfig, FairnessMonitor
from services.drift.features import Features
from services.drift.monitor import StreamMonitor
from services.drift.state import StateError, dump_monitor, load_monitor

CONTROL_RESET = "reset-reference"
MAX_CHECKPOINT_BYTES = 900_000  # under Kafka's default 1 MB message limit, with room for the record


class DriftDetector:
    def __init__(
        self,
        table: MutableMapping[bytes, Any],
        calibration: dict[str, Any],
        semantic: Any,
        checkpoint_every: int,
        metrics: Any,
        log: Any,
        fairness: FairnessConfig | None = None,
    ) -> None:
        self.table = table
        self.fairness = fairness or FairnessConfig()
        self.fairness_monitors: dict[str, FairnessMonitor] = {}
        self.calibration = calibration
        self.semantic = semantic
        self.checkpoint_every = checkpoint_every
        self.metrics = metrics
        self.log = log
        self.monitors: dict[str, StreamMonitor] = {}

    def monitor_for(self, stream_key: str) -> StreamMonitor:
        if stream_key not in self.monitors:
            saved = self.table.get(stream_key.encode())
            mon = None
            if saved:
                try:
                    mon = load_monitor(saved, self.calibration, self.semantic)
                except StateError as exc:
                    self.log.warning(
                        "drift.state_not_restored",
                        stream=stream_key,
                        reason=str(exc),
                        action="detectors start afresh and warm up again",
                    )
            if mon is None or mon.stream != stream_key:
                mon = StreamMonitor(stream_key, self.calibration)
            self.monitors[stream_key] = mon
        return self.monitors[stream_key]

    def checkpoint(self, stream_key: str, mon: StreamMonitor) -> None:
        doc = dump_monitor(mon)
        if len(doc) > MAX_CHECKPOINT_BYTES:
            self.log.warning("drift.checkpoint_skipped", stream=stream_key, bytes=len(doc), limit=MAX_CHECKPOINT_BYTES)
            return
        self.table[stream_key.encode()] = doc

    def fairness_monitor(self, stream_key: str) -> FairnessMonitor:
        if stream_key not in self.fairness_monitors:
            model = stream_key.rsplit("|", 1)[0]
            saved = self.table.get(stream_key.encode())
            mon = None
            if saved:
                try:
                    mon = FairnessMonitor.load(saved, self.fairness)
                except (ValueError, KeyError, TypeError) as exc:
                    self.log.warning("fairness.state_not_restored", stream=stream_key, reason=str(exc)[:200])
            self.fairness_monitors[stream_key] = mon or FairnessMonitor(model, self.fairness)
        return self.fairness_monitors[stream_key]

    def handle_fairness(self, stream_key: str, payload: dict[str, Any], now_ms: int | None) -> list[dict[str, Any]]:
        mon = self.fairness_monitor(stream_key)
        segments = {str(k): str(v) for k, v in dict(payload.get("segments") or {}).items()}
        outcomes = {str(k): (None if v is None else float(v)) for k, v in dict(payload.get("outcomes") or {}).items()}
        events = mon.observe(segments, outcomes, now_ms)
        self.metrics.inc("argus_detector_updates_total", kind="fairness")
        for e in events:
            self.metrics.inc(
                "argus_drift_events_total", feature=e["feature"], detector=e["detector"], status=e["status"]
            )
            self.log.info(
                "fairness.disparity" if e["status"] == "started" else "fairness.disparity_ended",
                stream=stream_key,
                feature=e["feature"],
                p_value=e["p_value"],
                difference=e["detector_params"]["difference"],
            )
        # the window is a few hundred KB: checkpointed at each evaluation, not each answer
        if events or mon.position % self.fairness.evaluate_every == 0:
            doc = mon.dump()
            if len(doc) <= MAX_CHECKPOINT_BYTES:
                self.table[stream_key.encode()] = doc
            else:
                self.log.warning("fairness.checkpoint_skipped", stream=stream_key, bytes=len(doc))
        return events

    def handle(self, stream_key: str, raw: bytes, now_ms: int | None = None) -> list[dict[str, Any]]:
        """One message of the features topic; the DriftEvent records it raised."""
        payload = json.loads(raw)
        if "fairness" in payload:
            return self.handle_fairness(stream_key, payload["fairness"], now_ms)
        mon = self.monitor_for(stream_key)
        if payload.get("control") == CONTROL_RESET:
            mon.reset_reference()
            self.checkpoint(stream_key, mon)
            self.log.info("drift.reference_reset", stream=stream_key)
            return []
        if "embedding" in payload:
            alarms = mon.observe_embedding(unpack(payload["embedding"]), payload["request_id"], self.semantic)
            self.metrics.inc("argus_detector_updates_total", kind="embedding")
        else:
            f = Features(**payload)
            alarms = mon.observe(f)
            for kind, values in (("numeric", f.numeric), ("categorical", f.categorical), ("binary", f.binary)):
                if values:
                    self.metrics.inc("argus_detector_updates_total", len(values), kind=kind)
        events = [mon.drift_event(a, now_ms or int(time.time() * 1000)) for a in alarms]
        for alarm in alarms:
            self.metrics.inc(
                "argus_drift_events_total", feature=alarm.feature, detector=alarm.detector, status=alarm.status
            )
            self.log.info(
                "drift.detected" if alarm.status == "started" else "drift.ended",
                stream=stream_key,
                feature=alarm.feature,
                detector=alarm.detector,
                statistic=alarm.statistic,
                position=alarm.position,
            )
        if alarms or mon.position % self.checkpoint_every == 0:
            self.checkpoint(stream_key, mon)
        return events
