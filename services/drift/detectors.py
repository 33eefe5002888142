"""Detectors, per (stream, feature), with evidence for a DriftEvent.

- :class:`RiverNumeric`: river's own detectors (``ADWIN``, ``PageHinkley``, ``KSWIN``)
  used through river's interface (``update(x)``, ``drift_detected``).
- :class:`WindowKS`: a two-sample test of the current window against a pinned reference
  window (Kolmogorov-Smirnov statistic; PSI and Jensen-Shannon reported as evidence).
- :class:`WindowChi2`: the same for categorical features (chi-squared statistic).
- :class:`RiverBinary`: a Bernoulli-rate detector (river's ``binary.DDM``) for error and
  negative-feedback rates: concept drift without labels.

Windowed tests fire once per change: after an alarm they stay silent until the
statistic falls back under the threshold (hysteresis), so one episode gives one event.
Thresholds come from :mod:`services.drift.calibration`.
"""
from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Alarm:
    detector: str
    feature: str
    statistic: float
    threshold: float
    p_value: float | None
    reference_size: int
    current_size: int
    reference_summary: dict[str, float]
    current_summary: dict[str, float]
    position: int  # events seen on this stream when the change was located
    params: dict[str, str] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        if self.threshold <= 0:  # river detectors decide without a comparable threshold
            return "warning"
        return "critical" if self.statistic >= 1.5 * self.threshold else "warning"


def summary(values: Any) -> dict[str, float]:
    a = np.asarray(list(values), dtype=float)
    if a.size == 0:
        return {}
    q = np.quantile(a, [0.05, 0.5, 0.95])
    return {"mean": float(a.mean()), "std": float(a.std()), "p5": float(q[0]), "p50": float(q[1]), "p95": float(q[2]),
            "n": float(a.size)}


def ks_statistic(ref_sorted: np.ndarray, cur: np.ndarray) -> float:
    cur_sorted = np.sort(cur)
    grid = np.concatenate([ref_sorted, cur_sorted])
    cdf_r = np.searchsorted(ref_sorted, grid, side="right") / ref_sorted.size
    cdf_c = np.searchsorted(cur_sorted, grid, side="right") / cur_sorted.size
    return float(np.max(np.abs(cdf_r - cdf_c)))


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic two-sample KS p-value (Kolmogorov distribution)."""
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    s = sum(2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return float(min(1.0, max(0.0, s)))


def psi_and_js(ref_sorted: np.ndarray, cur: np.ndarray, bins: int = 10) -> tuple[float, float]:
    edges = np.unique(np.quantile(ref_sorted, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref_sorted, side="right"), minlength=edges.size + 1) + 0.5
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) + 0.5
    p, q = r / r.sum(), c / c.sum()
    psi = float(np.sum((q - p) * np.log(q / p)))
    m = (p + q) / 2
    js = float(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)))
    return psi, js


class _Windowed:
    """What the windowed tests share: a pinned reference, a sliding current window
    tested every ``step`` events once full, and one alarm per episode (hysteresis)."""

    def __init__(self, threshold: float, reference_size: int = 500, window: int = 200, step: int = 20) -> None:
        self.threshold = threshold
        self.reference_size = reference_size
        self.window = window
        self.step = step
        self.current: deque[Any] = deque(maxlen=window)
        self.seen = 0
        self.in_alarm = False

    def _due(self) -> bool:
        return len(self.current) >= self.window and self.seen % self.step == 0

    def _new_episode(self, statistic: float) -> bool:
        """True only for the first check over the threshold; re-armed once back under it."""
        if statistic <= self.threshold:
            self.in_alarm = False
            return False
        if self.in_alarm:
            return False
        self.in_alarm = True
        return True


class WindowKS(_Windowed):
    name = "ks"

    def __init__(self, threshold: float, reference_size: int = 500, window: int = 200, step: int = 20) -> None:
        super().__init__(threshold, reference_size, window, step)
        self.reference: list[float] = []
        self._ref_sorted: np.ndarray | None = None

    def reset_reference(self) -> None:
        self.reference, self._ref_sorted, self.in_alarm = [], None, False
        self.current.clear()

    def update(self, x: float, feature: str, position: int) -> Alarm | None:
        self.seen += 1
        if len(self.reference) < self.reference_size:
            self.reference.append(x)
            return None
        if self._ref_sorted is None:
            self._ref_sorted = np.sort(np.asarray(self.reference, dtype=float))
        self.current.append(x)
        if not self._due():
            return None
        cur = np.asarray(self.current, dtype=float)
        d = ks_statistic(self._ref_sorted, cur)
        if not self._new_episode(d):
            return None
        psi, js = psi_and_js(self._ref_sorted, cur)
        return Alarm(
            self.name, feature, d, self.threshold, ks_p_value(d, self._ref_sorted.size, cur.size),
            self._ref_sorted.size, cur.size, summary(self._ref_sorted), summary(cur) | {"psi": psi, "js": js},
            position - self.window // 2, {"reference": str(self.reference_size), "window": str(self.window)},
        )


class WindowChi2(_Windowed):
    name = "chi2"

    def __init__(self, threshold: float, reference_size: int = 500, window: int = 200, step: int = 20) -> None:
        super().__init__(threshold, reference_size, window, step)
        self.reference: Counter = Counter()

    def reset_reference(self) -> None:
        self.reference, self.in_alarm = Counter(), False
        self.current.clear()

    def update(self, x: str, feature: str, position: int) -> Alarm | None:
        self.seen += 1
        if sum(self.reference.values()) < self.reference_size:
            self.reference[x] += 1
            return None
        self.current.append(x)
        if not self._due():
            return None
        cur = Counter(self.current)
        cats = sorted(set(self.reference) | set(cur))
        n_ref = sum(self.reference.values())
        # expected counts from the reference mix (smoothed so unseen categories count)
        probs = np.array([(self.reference[c] + 0.5) / (n_ref + 0.5 * len(cats)) for c in cats])
        obs = np.array([cur[c] for c in cats], dtype=float)
        exp = probs * len(self.current)
        stat = float(np.sum((obs - exp) ** 2 / exp))
        if not self._new_episode(stat):
            return None
        ref_share = {f"share:{c}": (self.reference[c]) / n_ref for c in cats}
        cur_share = {f"share:{c}": cur[c] / len(self.current) for c in cats}
        return Alarm(self.name, feature, stat, self.threshold, None, n_ref, len(self.current), ref_share, cur_share,
                     position - self.window // 2, {"categories": str(len(cats)), "window": str(self.window)})


class RiverNumeric:
    """A river drift detector (``ADWIN``, ``PageHinkley`` or ``KSWIN``) on one feature."""

    def __init__(self, kind: str, params: dict[str, Any], summary_window: int = 200) -> None:
        from river import drift

        self.kind = kind
        self.params = dict(params)
        self.detector = {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN}[kind](**params)
        self.recent: deque[float] = deque(maxlen=summary_window)
        self.before: list[float] = []

    @property
    def name(self) -> str:
        return f"river.{type(self.detector).__name__}"

    def reset_reference(self) -> None:
        self.__init__(self.kind, self.params, self.recent.maxlen or 200)  # type: ignore[misc]

    def update(self, x: float, feature: str, position: int) -> Alarm | None:
        self.recent.append(x)
        self.detector.update(x)
        if not self.detector.drift_detected:
            return None
        width = int(getattr(self.detector, "width", 0) or 0)
        before = list(self.recent)[:-max(1, min(width, len(self.recent) // 2))] or list(self.recent)
        after = list(self.recent)[len(before):] or list(self.recent)
        stat = abs(float(np.mean(after)) - float(np.mean(before)))
        return Alarm(self.name, feature, stat, 0.0, None, len(before), len(after), summary(before), summary(after),
                     position - (width if width else 0), {k: str(v) for k, v in self.params.items()})


class RiverBinary:
    """Bernoulli rate (error, negative feedback) with river's ``binary.DDM``."""

    def __init__(self, params: dict[str, Any]) -> None:
        from river.drift import binary

        self.params = dict(params)
        self.detector = binary.DDM(**params)
        self.n = 0
        self.ones = 0
        self.recent: deque[int] = deque(maxlen=500)

    name = "river.DDM"

    def reset_reference(self) -> None:
        self.__init__(self.params)  # type: ignore[misc]

    def update(self, x: bool, feature: str, position: int) -> Alarm | None:
        self.n += 1
        self.ones += int(x)
        self.recent.append(int(x))
        self.detector.update(bool(x))
        if not self.detector.drift_detected:
            return None
        rate_before = self.ones / self.n
        rate_now = sum(self.recent) / len(self.recent)
        return Alarm(self.name, feature, rate_now - rate_before, 0.0, None, self.n, len(self.recent),
                     {"rate": rate_before}, {"rate": rate_now}, position, {k: str(v) for k, v in self.params.items()})
