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
    ) -> None:
        self.table = table
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

    def handle(self, stream_key: str, raw: bytes, now_ms: int | None = None) -> list[dict[str, Any]]:
        """One message of the features topic; the DriftEvent records it raised."""
        payload = json.loads(raw)
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
