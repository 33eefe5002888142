"""Sliding windows over signals and the metrics rules compute from them.

A signal is one fact from a stream, reduced to what rules need::

    Signal(source="responses", t=..., labels={"model": ..., "model_version": ..., "tenant": ...},
           values={"error": 0.0, "latency_ms": 182.0, "tokens": 96.0, "confidence": -0.41})

Each (rule, label values) pair owns one :class:`SlidingWindow` holding the samples of
the last ``window`` seconds (two windows for the ``*_change`` metrics, which compare the
current window with the one before it). :meth:`SlidingWindow.metric` returns ``None``
when there is too little data for a verdict.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Signal:
    source: str
    t: float
    labels: dict[str, str]
    values: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"s": self.source, "t": self.t, "l": self.labels, "v": self.values}

    @classmethod
    def from_json(cls, d: dict) -> "Signal":
        return cls(d["s"], float(d["t"]), dict(d["l"]), dict(d.get("v") or {}))


_QUANTILES = {"latency_p50": 50.0, "latency_p95": 95.0, "latency_p99": 99.0}
_GUARD_RATES = {
    "guard_block_rate": "blocked",
    "harmful_output_rate": "harmful",
    "guard_error_rate": "guard_error",
    "injection_attempts": "injection",
}


class SlidingWindow:
    __slots__ = ("span", "keep", "metric_name", "min_events", "samples", "last_update")

    def __init__(self, metric: str, span: float, min_events: int) -> None:
        self.metric_name = metric
        self.span = span
        self.keep = 2 * span if metric.endswith("_change") else span
        self.min_events = min_events
        self.samples: deque[tuple[float, dict[str, float | None]]] = deque()
        self.last_update = 0.0

    def add(self, t: float, values: dict[str, float | None]) -> None:
        if self.metric_name == "spend":  # one sample per minute: a day's window holds 1,440
            bucket = t - t % 60.0
            cost = float(values.get("cost") or 0.0)
            if self.samples and self.samples[-1][0] == bucket:
                last = self.samples[-1][1]
                last["cost"] = (last.get("cost") or 0.0) + cost
            else:
                self.samples.append((bucket, {"cost": cost}))
            self.last_update = t
            self.expire(t)
            return
        self.samples.append((t, values))
        self.last_update = t
        self.expire(t)

    def expire(self, now: float) -> None:
        horizon = now - self.keep
        s = self.samples
        while s and s[0][0] <= horizon:
            s.popleft()

    def _current(self, now: float) -> list[dict[str, float | None]]:
        start = now - self.span
        return [v for t, v in self.samples if t > start]

    def metric(self, now: float) -> tuple[float | None, int]:
        """(value, events in the current window); value ``None``: no verdict."""
        self.expire(now)
        name = self.metric_name
        cur = self._current(now)
        n = len(cur)
        if name == "lag":  # a gauge: the latest reading in the window
            return (float(cur[-1]["lag"] or 0.0), n) if cur else (None, 0)
        if name in ("throughput", "rate"):
            return (n / self.span if n >= self.min_events or n == 0 else None), n
        if name == "count":
            return float(n), n
        if name.endswith("_change"):
            prev = len(self.samples) - n
            if prev < max(self.min_events, 1):
                return None, n
            if name == "throughput_change":
                return n / prev, n
            prev_tokens = sum((v.get("tokens") or 0.0) for _, v in list(self.samples)[:prev])
            cur_tokens = sum((v.get("tokens") or 0.0) for v in cur)
            return (cur_tokens / prev_tokens if prev_tokens > 0 else None), n
        if name == "spend":
            return float(sum(v.get("cost") or 0.0 for v in cur)), n
        if name in _GUARD_RATES:  # over the answers the rails ran on
            key = _GUARD_RATES[name]
            vals = [v[key] for v in cur if v.get(key) is not None]
            if name == "injection_attempts":
                return float(sum(vals)), len(vals)
            if not vals:
                return 0.0, 0
            return (sum(vals) / len(vals) if len(vals) >= self.min_events else None), len(vals)
        if n == 0:
            return 0.0 if name in ("error_rate", "negative_feedback_rate") else None, 0
        if n < self.min_events:
            return None, n
        if name == "error_rate":
            return sum((v.get("error") or 0.0) for v in cur) / n, n
        if name == "negative_feedback_rate":
            return sum((v.get("negative") or 0.0) for v in cur) / n, n
        if name in _QUANTILES:
            arr = np.fromiter((v["latency_ms"] for v in cur if v.get("latency_ms") is not None), dtype=float)
            return (float(np.percentile(arr, _QUANTILES[name])) if arr.size else None), n
        if name == "tokens_per_s":
            return sum((v.get("tokens") or 0.0) for v in cur) / self.span, n
        if name == "confidence_mean":
            vals = [v["confidence"] for v in cur if v.get("confidence") is not None]
            return (sum(vals) / len(vals) if len(vals) >= self.min_events else None), n
        if name == "max_statistic_ratio":
            ratios = [(v.get("statistic") or 0.0) / v["threshold"] for v in cur if v.get("threshold")]
            return (max(ratios) if ratios else 0.0), n
        raise KeyError(f"unknown metric {name!r}")
