"""Detectors, per (stream, feature), with evidence for a DriftEvent.

- :class:`CusumNumeric`: a two-sided mean-shift CUSUM on normal scores against a
  pinned reference (:class:`services.drift.cusum.MeanShift`, river's interface).
- :class:`WindowKS`: a two-sample test of the current window against a pinned reference
  window (Kolmogorov-Smirnov statistic; PSI and Jensen-Shannon reported as evidence).
- :class:`WindowChi2`: the same for categorical features (chi-squared statistic).
- :class:`CusumRate`: a Bernoulli-rate CUSUM (:class:`services.drift.cusum.RateShift`)
  for error, refusal and negative-feedback rates, one- or two-sided per feature.

Windowed tests fire once per change: after an alarm they stay silent until the
statistic falls back under the threshold (hysteresis), so one episode gives one event.
Thresholds come from :mod:`services.drift.calibration`.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

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
    position: int  # stream position of the located change (the episode's start for an ended event)
    params: dict[str, str] = field(default_factory=dict)
    status: str = "started"  # started | ended (the stream is back at its reference)
    direction: str = ""  # up | down, where the detector can say
    severity_hint: str = ""
    ended_at: int | None = None  # stream position where the end was established

    @property
    def severity(self) -> str:
        if self.status == "ended":
            return "info"
        if self.severity_hint:
            return self.severity_hint
        return "critical" if self.statistic >= 1.5 * self.threshold else "warning"


def summary(values: Any) -> dict[str, float]:
    a = np.asarray(list(values), dtype=float)
    if a.size == 0:
        return {}
    q = np.quantile(a, [0.05, 0.5, 0.95])
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "p5": float(q[0]),
        "p50": float(q[1]),
        "p95": float(q[2]),
        "n": float(a.size),
    }


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
    tested every ``step`` events once full, and one alarm per episode (hysteresis).

    Hysteresis rule: after an alarm, the test re-arms only once its statistic has stayed
    below ``REARM_FRACTION`` of the threshold for a whole window of new events
    (``window // step`` consecutive checks). A statistic hovering around the threshold
    while the shift lasts is one episode, one event. Re-arming is the episode's end: the
    test then returns an ``ended`` alarm (the located start of the episode as its
    position), which the alerting side can resolve on."""

    REARM_FRACTION = 0.75
    episode_position: int | None = None
    just_ended = False

    def __init__(self, threshold: float, reference_size: int = 500, window: int = 200, step: int = 20) -> None:
        self.threshold = threshold
        self.reference_size = reference_size
        self.window = window
        self.step = step
        self.current: deque[Any] = deque(maxlen=window)
        self.seen = 0
        self.in_alarm = False
        self.calm = 0  # consecutive checks well below the threshold since the alarm

    def _due(self) -> bool:
        return len(self.current) >= self.window and self.seen % self.step == 0

    def _new_episode(self, statistic: float) -> bool:
        """True only for the first check over the threshold of an episode (see the class)."""
        if self.in_alarm:
            calm = getattr(self, "calm", 0)
            self.calm = calm + 1 if statistic < self.REARM_FRACTION * self.threshold else 0
            if self.calm >= max(1, self.window // self.step):
                self.in_alarm, self.calm = False, 0  # the episode ended: the next crossing is a new one
                self.just_ended = True
            return False
        if statistic <= self.threshold:
            return False
        self.in_alarm, self.calm = True, 0
        return True

    def _ended(
        self, feature: str, position: int, statistic: float, current: Callable[[], dict[str, float]]
    ) -> Alarm | None:
        """The ``ended`` alarm when the last check closed the episode (``current``
        computes its evidence, only then)."""
        if not self.just_ended:
            return None
        self.just_ended = False
        start, self.episode_position = self.episode_position, None
        return Alarm(
            self.name,
            feature,
            statistic,
            self.threshold,
            None,
            self.reference_size,
            len(self.current),
            {},
            current(),
            start if start is not None else position,
            {"window": str(self.window)},
            status="ended",
            ended_at=position,
        )


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
            return self._ended(feature, position, d, lambda: summary(cur))
        psi, js = psi_and_js(self._ref_sorted, cur)
        self.episode_position = position - self.window // 2
        return Alarm(
            self.name,
            feature,
            d,
            self.threshold,
            ks_p_value(d, self._ref_sorted.size, cur.size),
            self._ref_sorted.size,
            cur.size,
            summary(self._ref_sorted),
            summary(cur) | {"psi": psi, "js": js},
            position - self.window // 2,
            {"reference": str(self.reference_size), "window": str(self.window)},
        )


class WindowChi2(_Windowed):
    name = "chi2"

    def __init__(self, threshold: float, reference_size: int = 500, window: int = 200, step: int = 20) -> None:
        super().__init__(threshold, reference_size, window, step)
        self.reference: Counter = Counter()

    def reset_reference(self) -> None:
        self.reference, self.in_alarm, self.pinned = Counter(), False, False
        self.current.clear()

    def update(self, x: str, feature: str, position: int) -> Alarm | None:
        self.seen += 1
        if not getattr(self, "pinned", False):  # checkpoints from before the flag: recomputed once
            if sum(self.reference.values()) < self.reference_size:
                self.reference[x] += 1
                return None
            self.pinned = True
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
            return self._ended(
                feature, position, stat, lambda: {f"share:{c}": cur[c] / len(self.current) for c in cats}
            )
        self.episode_position = position - self.window // 2
        ref_share = {f"share:{c}": (self.reference[c]) / n_ref for c in cats}
        cur_share = {f"share:{c}": cur[c] / len(self.current) for c in cats}
        return Alarm(
            self.name,
            feature,
            stat,
            self.threshold,
            None,
            n_ref,
            len(self.current),
            ref_share,
            cur_share,
            position - self.window // 2,
            {"categories": str(len(cats)), "window": str(self.window)},
        )


class _Cusum:
    """A :mod:`services.drift.cusum` detector (river's interface) on one feature, with
    the evidence of its alarms: the located change point, the side, the level before and
    after, and an ``ended`` event when the stream is back at its reference."""

    name = "cusum"

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.episode_position: int | None = None  # located change point of the open episode

    @property
    def in_alarm(self) -> bool:
        return self.detector.in_episode

    def reset_reference(self) -> None:
        self.detector.reset_reference()
        self.episode_position = None

    def _summaries(self) -> tuple[dict[str, float], dict[str, float]]:
        raise NotImplementedError

    def update(self, x: Any, feature: str, position: int) -> Alarm | None:
        d = self.detector
        d.update(x)
        if d.drift_ended:  # located at the episode's start, established here
            start = self.episode_position if self.episode_position is not None else position
            self.episode_position = None
            return self._alarm(feature, start, 0, {}, status="ended", ended_at=position)
        if not d.drift_detected:
            return None
        self.episode_position = position - (d.n - d.change_point)
        return self._alarm(
            feature,
            self.episode_position,
            d.n - d.change_point + 1,
            None,
            direction=d.direction,
            severity_hint=self._severity(),
        )

    def _alarm(self, feature: str, located: int, current: int, after: dict | None, **kw: Any) -> Alarm:
        d = self.detector
        before, summary_after = self._summaries()
        return Alarm(
            self.name,
            feature,
            d.statistic,
            d.threshold,
            None,
            int(d.moments[0]),
            current,
            before,
            summary_after if after is None else after,
            located,
            self.params(),
            **kw,
        )

    def params(self) -> dict[str, str]:
        d = self.detector
        return {"sides": d.sides, "threshold": f"{d.threshold:g}", "designs": self.designs}

    def _severity(self) -> str:
        raise NotImplementedError


class CusumNumeric(_Cusum):
    """Mean shift of a numeric feature (:class:`services.drift.cusum.MeanShift`)."""

    name = "cusum.mean"
    designs = "mean +-0.25,0.5,1 sd; spread x1.5, x2/3 (normal scores)"

    def __init__(self, threshold: float, sides: str = "both", reference_size: int = 2000) -> None:
        from services.drift.cusum import MeanShift

        super().__init__(MeanShift(threshold, sides=sides, reference_size=reference_size))

    def _summaries(self) -> tuple[dict[str, float], dict[str, float]]:
        d = self.detector
        pts, k = d.points, d.QUANTILES
        before = (
            {"p5": pts[k // 20], "p50": pts[k // 2], "p95": pts[k - k // 20], "n": float(d.moments[0])} if pts else {}
        )
        if d.direction in ("wider", "narrower"):
            return before, {"spread_ratio": d.level}
        # the shift in the reference's normal-score units (about standard deviations)
        return before, {"shift_sd": d.level}

    def _severity(self) -> str:
        d = self.detector
        if d.direction in ("wider", "narrower"):
            return "critical" if d.level >= 2.0 or d.level <= 0.5 else "warning"
        return "critical" if abs(d.level) >= 1.0 else "warning"


class CusumRate(_Cusum):
    """Change of a Bernoulli rate (:class:`services.drift.cusum.RateShift`)."""

    name = "cusum.rate"
    designs = "odds x1.5,2,4 up; x1/1.5,1/2 down"

    def __init__(self, threshold: float, sides: str = "up") -> None:
        from services.drift.cusum import RateShift

        super().__init__(RateShift(threshold, sides=sides))

    def _summaries(self) -> tuple[dict[str, float], dict[str, float]]:
        d = self.detector
        return {"rate": d.p0, "n": float(d.moments[0])}, {"rate": d.level}

    def _severity(self) -> str:
        d = self.detector
        ratio = d.level / d.p0 if d.p0 > 0 else float("inf")
        return "critical" if ratio >= 2.0 or ratio <= 0.5 else "warning"


class WarmupADWIN:
    """river's ``ADWIN`` (at the calibrated delta) for a numeric feature's first
    ``warmup`` events, while the mean CUSUM is still collecting its 2,000-value reference:
    a stream with little traffic (a demo, a new model version) is watched from its first
    events. ADWIN needs no reference and its bound is conservative on short windows. It
    retires after ``warmup`` events; an episode it opened is then released without an
    ``ended`` event (ADWIN cannot say when a change is over). Checkpointed by replaying
    the values it saw since its last alarm."""

    name = "river.ADWIN"

    def __init__(self, delta: float, warmup: int = 2000) -> None:
        from river import drift

        self.delta, self.warmup = delta, warmup
        self.detector = drift.ADWIN(delta=delta)
        self.seen = 0
        self.history: list[float] = []  # since the last alarm, for the checkpoint's replay
        self.recent: deque[float] = deque(maxlen=200)
        self.in_alarm = False

    @property
    def retired(self) -> bool:
        return self.seen >= self.warmup

    def reset_reference(self) -> None:
        self.__init__(self.delta, self.warmup)  # type: ignore[misc]

    def replay(self, values: list[float], seen: int) -> None:
        for x in values:
            self.detector.update(x)
            self.history.append(x)
            self.recent.append(x)
        self.seen = seen

    def update(self, x: float, feature: str, position: int) -> Alarm | None:
        if self.retired:
            return None
        self.seen += 1
        self.recent.append(x)
        self.detector.update(x)
        if not self.detector.drift_detected:
            self.history.append(x)
            return None
        self.history = [x]
        width = int(getattr(self.detector, "width", 0) or 0)
        before = list(self.recent)[: -max(1, min(width, len(self.recent) // 2))] or list(self.recent)
        after = list(self.recent)[len(before) :] or list(self.recent)
        return Alarm(
            self.name,
            feature,
            abs(float(np.mean(after)) - float(np.mean(before))),
            0.0,
            None,
            len(before),
            len(after),
            summary(before),
            summary(after),
            position - width,
            {"delta": f"{self.delta:g}", "warmup": str(self.warmup)},
            direction="up" if np.mean(after) > np.mean(before) else "down",
            severity_hint="warning",
        )


def rbf_kernel(z: np.ndarray, sigma: float) -> np.ndarray:
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    return np.exp(-d2 / (2.0 * sigma * sigma))


def mmd_permutation_test(
    ref: np.ndarray, cur: np.ndarray, sigma: float, permutations: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Squared MMD (biased V-statistic, RBF kernel) of two samples and its permutation
    p-value: ``(statistic, p_value, null_p99)``. The statistic is ``sᵀKs`` with
    ``s = +1/n`` on the reference and ``-1/m`` on the current sample, so all
    permutations are evaluated at once as ``diag(Sᵀ K S)``."""
    n, m = len(ref), len(cur)
    k = rbf_kernel(np.vstack([ref, cur]), sigma)
    s = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    stat = float(s @ k @ s)
    perms = np.stack([rng.permutation(s) for _ in range(permutations)], axis=1)
    null = np.einsum("ij,ij->j", perms, k @ perms)
    p = (1.0 + float(np.sum(null >= stat))) / (permutations + 1.0)
    return stat, p, float(np.quantile(null, 0.99))


class WindowMMD(_Windowed):
    """Semantic drift of prompts: a multivariate two-sample test (MMD with an RBF
    kernel) of the current window of prompt embeddings against a pinned reference.

    Embeddings of small LMs are strongly anisotropic, so at pin time the reference is
    centred and projected on its top ``dims`` principal components plus the distance to
    that subspace (both kept, so every later embedding goes through the same map), and the kernel bandwidth is the median
    pairwise distance of the projected reference. The threshold is a permutation
    threshold: an alarm needs a p-value ``<= alpha`` (default ``1/(permutations+1)``:
    the statistic above every permutation). Tested every ``step`` embeddings, that is at
    most ``100_000/step`` tests per 100k embeddings, so ``alpha <= step/100_000`` keeps
    the false alarms within the 1 per 100k budget even if the tests were independent.
    """

    name = "mmd"

    def __init__(
        self,
        reference_size: int = 200,
        window: int = 100,
        step: int = 50,
        permutations: int = 4000,
        dims: int = 16,
        alpha: float | None = None,
    ) -> None:
        self.permutations = permutations
        self.alpha = alpha if alpha is not None else 1.0 / (permutations + 1)
        self.rearm_p = 0.05
        super().__init__(self.alpha, reference_size, window, step)
        self.dims = dims
        self.reference: list[np.ndarray] = []
        self.mean: np.ndarray | None = None
        self.basis: np.ndarray | None = None
        self.ref_z: np.ndarray | None = None
        self.sigma = 1.0
        self.positions: deque[int] = deque(maxlen=window)

    def reset_reference(self) -> None:
        self.reference, self.mean, self.basis, self.ref_z, self.in_alarm = [], None, None, None, False
        self.current.clear()
        self.positions.clear()

    def _pin(self) -> None:
        ref = np.asarray(self.reference, dtype=np.float64)
        self.mean = ref.mean(axis=0)
        centred = ref - self.mean
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        self.basis = vt[: self.dims].T
        self.ref_z = self._project(centred)
        d = np.sqrt(np.maximum(((self.ref_z[:, None, :] - self.ref_z[None, :, :]) ** 2).sum(-1), 0.0))
        self.sigma = float(np.median(d[np.triu_indices(len(d), 1)])) or 1.0
        self.reference = []  # the projection is all that is needed from now on

    @property
    def pinned(self) -> bool:
        return self.ref_z is not None

    def distance_to_reference(self, x: Any) -> float:
        """Euclidean distance of an embedding to the reference centroid (a novelty score)."""
        return float(np.linalg.norm(np.asarray(x, dtype=np.float64) - self.mean))

    def _project(self, centred: np.ndarray) -> np.ndarray:
        """Coordinates on the reference's principal components plus the distance to
        that subspace: content the reference never had (a new topic) lies mostly
        outside it, and would vanish from a plain projection."""
        z = centred @ self.basis
        residual = np.linalg.norm(centred - z @ self.basis.T, axis=1, keepdims=True)
        return np.hstack([z, residual])

    def update(self, x: Any, feature: str, position: int) -> Alarm | None:
        self.seen += 1
        if self.ref_z is None:
            self.reference.append(np.asarray(x, dtype=np.float64))
            if len(self.reference) >= self.reference_size:
                self._pin()
            return None
        z = self._project((np.asarray(x, dtype=np.float64) - self.mean)[None, :])[0]
        self.current.append(z)
        self.positions.append(position)
        if not self._due():
            return None
        cur = np.asarray(self.current)
        stat, p, null99 = mmd_permutation_test(
            self.ref_z, cur, self.sigma, self.permutations, np.random.default_rng(position)
        )
        # one alarm per episode: re-armed only once the windows look alike again (p > rearm_p)
        if self.in_alarm:
            self.in_alarm = p <= self.rearm_p
            self.just_ended = not self.in_alarm
            return self._ended(feature, position, stat, lambda: {"mmd2": stat})
        if p > self.alpha:
            return None
        self.in_alarm = True
        self.episode_position = self.positions[len(self.positions) // 2]
        ref_centroid = self.ref_z.mean(axis=0)
        return Alarm(
            self.name,
            feature,
            stat,
            null99,
            p,
            len(self.ref_z),
            len(cur),
            {
                "mmd2_null_p99": null99,
                "bandwidth": self.sigma,
                "spread": float(np.linalg.norm(self.ref_z - ref_centroid, axis=1).mean()),
            },
            {
                "mmd2": stat,
                "centroid_shift": float(np.linalg.norm(cur.mean(axis=0) - ref_centroid)),
                "spread": float(np.linalg.norm(cur - cur.mean(axis=0), axis=1).mean()),
            },
            self.positions[len(self.positions) // 2],  # embeddings are a sample: locate by stream position
            {
                "reference": str(self.reference_size),
                "window": str(self.window),
                "permutations": str(self.permutations),
                "alpha": f"{self.alpha:.3g}",
                "dims": str(self.dims),
            },
        )
