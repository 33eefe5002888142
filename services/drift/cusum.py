"""Sequential change detection against a pinned reference: Page's CUSUM, two-sided,
over several design shifts at once, with a change-point estimate and an end of episode.

Why not river's ``ADWIN``/``DDM`` alone (measured in ``bench/RESULTS.md``):

- ``DDM`` learns its reference from a warm-up window; at a 1 % base rate that window
  often holds no error, its minimum rate and spread are 0, and the next error fires.
- ADWIN needs no model of the change, which makes it slow on small shifts once its
  ``delta`` is tightened to a false-alarm budget, and it locates a gradual change late.
- Neither says when a drift ended.

A CUSUM is the sequential likelihood-ratio test for a change from a known reference to a
given alternative, optimal for that alternative (Lorden, 1971). The reference is pinned
from the stream itself (as the windowed tests do), the alternatives are a few design
shifts on each side, and one threshold ``h`` (in log-likelihood-ratio units) is
calibrated for the union of them, on stationary streams whose references are estimated
exactly as here, so the reference's own estimation error is inside the budget
(:mod:`services.drift.calibration`).

For each design, ``S = max(0, S + llr(x))``; the alarm comes when ``S > h``. The event
after the last time ``S`` was 0 is the change-point estimate, and the mean since then
the level after the change. After an alarm the detector is *in an episode*: it raises
nothing more in either direction, and runs one CUSUM for "back at the reference" against
"still shifted by the smallest design shift on that side"; when that one crosses ``h``
while none of the (still running) forward CUSUMs sees a change, the episode has **ended**
(``drift_ended``), and the detector re-arms. A ramp that keeps rising stays one episode.

Both classes keep river's interface: ``update(x)`` and ``drift_detected``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from statistics import NormalDist
from typing import Any

from river import base

SIDES = ("up", "down", "both")
_NORMAL = NormalDist()


class _PinnedCusum:
    """What both families share: the reference, the designs, the episode and its end.

    The reference is first pinned from the stream's first events, then keeps growing
    with events ``LAG`` behind the newest (a rate: ~100 expected positives behind, at
    most 20,000) (up to ``max_reference``), while no episode is
    open and every statistic is below ``QUIET``: an unlucky first reference is corrected as the stream goes on (the estimation
    error of the reference, not the stream, is what drives false alarms of a CUSUM), and
    a change is normally found before its events reach the reference. Events buffered at
    an alarm are dropped, and nothing enters the reference during an episode.
    """

    LAG = 2000
    REFRESH = 500  # coefficients are recomputed after this many events join the reference
    QUIET = 6.0  # events join the reference only while every statistic is below this (llr)

    def __init__(self, threshold: float, sides: str, max_reference: int) -> None:
        if sides not in SIDES:
            raise ValueError(f"sides must be one of {SIDES}, not {sides!r}")
        self.threshold = float(threshold)
        self.sides = sides
        self.max_reference = max_reference
        self.n = 0  # events seen
        self.pinned = False
        self.moments = [0.0, 0.0, 0.0]  # count, mean, M2 of the reference (transformed values)
        self.pending: deque[float] = deque()  # transformed values waiting to join the reference
        self.s: list[float] = []  # per design: the CUSUM statistic
        self.start: list[int] = []  # per design: the event after which S was last 0
        self.total: list[float] = []  # per design: sum of the standardised values since then
        self.episode: dict[str, Any] | None = None
        self.change_point = 0  # detector's own event count of the first changed event
        self.direction = ""
        self.level = 0.0  # the estimated level after the change (standardised units / rate)
        self.statistic = 0.0
        self.drift_ended = False
        self._drift_detected = False
        self._coef: list[tuple[float, float, float]] = []
        self._squared: list[bool] = []
        self._lag = self.LAG
        self._center, self._inv_spread = 0.0, 1.0
        self._armed: list[bool] = []
        self.calibrating: list[float] | None = None  # excursion maxima, for calibration only
        self._excursion: list[float] = []

    # -- what a family defines: every llr here is a*z + b + c*z*z in the standardised value z
    def _designs(self) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def _coefficients(self, design: Any) -> tuple[float, float, float]:
        """(a, b, c) of the llr of the change from the reference to ``design``."""
        raise NotImplementedError

    def _back_coefficients(self, design: Any) -> tuple[float, float, float]:
        """(a, b, c) of the llr of "back at the reference" against "still at ``design``"."""
        raise NotImplementedError

    def _size(self, design: Any) -> float:
        """How far ``design`` is from the reference (to find the smallest of a side)."""
        raise NotImplementedError

    def _transform(self, x: Any) -> float:
        """The value the reference is made of (a normal score, or 0/1)."""
        raise NotImplementedError

    def _standardiser(self) -> tuple[float, float]:
        """(centre, 1/spread) that standardise a transformed value, from the reference."""
        return 0.0, 1.0

    def _collect(self, x: Any) -> bool:
        """Feed the first reference; True once it is pinned."""
        raise NotImplementedError

    def _level_after(self, direction: str, design: Any, mean: float) -> float:
        """The level after the change from the mean of the design's statistic since it."""
        raise NotImplementedError

    # -- the reference -------------------------------------------------------------------
    def _absorb(self, u: float) -> None:
        c, m, m2 = self.moments
        c += 1
        d = u - m
        m += d / c
        self.moments = [c, m, m2 + d * (u - m)]

    def _lag_for_reference(self) -> int:
        return self.LAG

    def _watched(self, direction: str) -> bool:
        return self.sides in ("both", direction)

    def _refresh(self) -> None:
        self._lag = self._lag_for_reference()
        self._center, self._inv_spread = self._standardiser()
        designs = self._designs()
        self._coef = [self._coefficients(d) for _, d in designs]
        self._squared = [c != 0.0 for _, _, c in self._coef]  # designs whose statistic is z*z
        self._armed = [self._watched(direction) for direction, _ in designs]

    def _arm(self) -> None:
        k = len(self._designs())
        self.s, self.start, self.total, self._excursion = [0.0] * k, [self.n] * k, [0.0] * k, [0.0] * k
        self._refresh()

    # -- the test ------------------------------------------------------------------------
    def update(self, x: Any) -> None:
        self._drift_detected = False
        self.drift_ended = False
        self.n += 1
        if not self.pinned:
            if self._collect(x):
                self.pinned = True
                self._arm()
            return
        u = self._transform(x)
        z = (u - self._center) * self._inv_spread
        if self.episode is not None:
            # the forward CUSUMs keep running (capped, no alarms): the episode ends only
            # when the back test says "at the reference" and none of them sees any change
            # (a change smaller than the design that fired can look closer to the
            # reference than to that design while another design still sees it)
            zz, cap = z * z, 2.0 * self.threshold
            stats = self.s
            for i, (a, b, c) in enumerate(self._coef):
                s = stats[i] + a * z + b + c * zz
                stats[i] = 0.0 if s < 0.0 else (cap if s > cap else s)
            ep = self.episode
            back = ep["back"] + ep["a"] * z + ep["b"] + ep["c"] * zz
            ep["back"] = back if back > 0.0 else 0.0
            if back > self.threshold and max(stats) < self.QUIET:
                self.statistic = back
                self.episode = None
                self.drift_ended = True
                self._arm()
            return
        pending = self.pending
        pending.append(u)
        if len(pending) > self._lag:
            old = pending.popleft()
            # only while every CUSUM is quiet: a slow change that builds evidence for longer
            # than the lag must not leak into the reference it is measured against
            if self.moments[0] < self.max_reference and max(self.s) < self.QUIET:
                self._absorb(old)
                if int(self.moments[0]) % self.REFRESH == 0:
                    self._refresh()
        zz = z * z
        n, stats, starts, totals, excursion = self.n, self.s, self.start, self.total, self._excursion
        calibrating, squared, armed = self.calibrating, self._squared, self._armed
        best, best_s = -1, 0.0
        for i, (a, b, c) in enumerate(self._coef):
            s = stats[i] + a * z + b + c * zz
            if s <= 0.0:
                if calibrating is not None and excursion[i] > 0.0:
                    calibrating.append(excursion[i])
                stats[i], starts[i], totals[i], excursion[i] = 0.0, n, 0.0, 0.0
                continue
            stats[i] = s
            totals[i] += zz if squared[i] else z
            if s > excursion[i]:
                excursion[i] = s
            if s > best_s and armed[i]:
                best, best_s = i, s
        if best < 0 or best_s <= self.threshold:
            return
        designs = self._designs()
        direction, design = designs[best]
        self.change_point = starts[best] + 1
        self.direction = direction
        self.level = self._level_after(direction, design, totals[best] / max(n - starts[best], 1))
        self.statistic = best_s
        # the end: back at the reference rather than still shifted by the smallest design
        # of that side (the level estimated at the alarm is biased away from the
        # reference: the CUSUM fired on the run that looked most shifted)
        smallest = min((d for side, d in designs if side == direction), key=self._size)
        a, b, c = self._back_coefficients(smallest)
        self.episode = {"level": self.level, "back": 0.0, "a": a, "b": b, "c": c}
        self.s = [0.0] * len(stats)  # the forward CUSUMs start the episode afresh
        pending.clear()  # may hold changed events: they never join the reference
        self._drift_detected = True

    @property
    def drift_detected(self) -> bool:
        return self._drift_detected

    @property
    def in_episode(self) -> bool:
        return self.episode is not None


class MeanShift(_PinnedCusum, base.DriftDetector):
    """A shift of a numeric feature, in units of its reference spread.

    Values are first turned into *normal scores* against the reference:
    ``z = Phi^-1(F_ref(x))`` at 201 quantiles of the first half of the first
    ``reference_size`` values (mid-rank on ties), ``F_ref`` kept within
    ``[1/(2n), 1 - 1/(2n)]`` so ``|z| <= 3.3``, and linear between the quantiles. Under no change the scores are
    standard normal whatever the feature's shape (skewed latencies, integer token
    counts, a constant), which is what the CUSUM's threshold was calibrated for: a burst
    of tail values in a skewed stream can no longer pass for a shift, and one outlier
    adds at most 3.3. The reference's own mean and spread of the scores (the rest of the
    first values, then growing, see :class:`_PinnedCusum`) standardise them. A constant
    feature that moves gives the extreme score at once.

    Designs: shifts of 0.25, 0.5 and 1 on each side (``llr = d*z - d*d/2``); for a
    normal feature these are shifts of the mean in standard deviations. And a spread
    1.5x wider or 2/3 as wide (``llr = -log r + z^2/2 (1 - 1/r^2)``): a variance change
    leaves the mean of the scores alone. Directions: ``up``/``down`` (the mean, watched
    as ``sides`` says) and ``wider``/``narrower`` (the spread, always watched).
    """

    DESIGNS = (0.25, 0.5, 1.0)
    SCALES = (1.5, 0.67)  # spread x1.5 (wider) and x2/3 (narrower)
    QUANTILES = 200  # intervals between the stored quantiles

    def __init__(
        self, threshold: float, sides: str = "both", reference_size: int = 2000, max_reference: int = 50_000
    ) -> None:
        _PinnedCusum.__init__(self, threshold, sides, max_reference)
        base.DriftDetector.__init__(self)
        self.reference_size = reference_size
        self.first: list[float] = []  # the first half of the reference, until its quantiles are taken
        self.points: list[float] = []  # QUANTILES + 1 quantiles of the first half
        self._zs: list[float] = []  # the normal score at each of them
        self.eps = 0.5 / max(1, reference_size // 2)

    def _designs(self) -> list[tuple[str, Any]]:
        return (
            [("up", d) for d in self.DESIGNS]
            + [("down", -d) for d in self.DESIGNS]
            + [("wider", ("scale", r)) for r in self.SCALES if r > 1]
            + [("narrower", ("scale", r)) for r in self.SCALES if r < 1]
        )

    def _watched(self, direction: str) -> bool:
        if direction in ("wider", "narrower"):
            return self.moments[2] > 0.0  # a constant reference has no spread to compare
        return super()._watched(direction)

    @staticmethod
    def _scale_llr(r: float) -> tuple[float, float, float]:
        # N(0, 1) -> N(0, r^2): -log r + z^2/2 (1 - 1/r^2)
        return 0.0, -math.log(r), 0.5 * (1.0 - 1.0 / (r * r))

    def _coefficients(self, design: Any) -> tuple[float, float, float]:
        if isinstance(design, tuple):
            return self._scale_llr(design[1])
        return design, -0.5 * design * design, 0.0

    def _back_coefficients(self, design: Any) -> tuple[float, float, float]:
        a, b, c = self._coefficients(design)
        return -a, -b, -c  # the negated llr: from the design back to the reference

    def _size(self, design: Any) -> float:
        return abs(math.log(design[1])) if isinstance(design, tuple) else abs(design)

    def _transform(self, x: Any) -> float:
        pts, v = self.points, float(x)
        lo = bisect.bisect_left(pts, v)
        if lo < len(pts) and pts[lo] == v:  # equal to stored quantiles: the middle of their ranks
            hi = bisect.bisect_right(pts, v, lo)
            return self._score((lo + hi - 1) / 2 / self.QUANTILES)
        if lo == 0:
            return self._zs[0]
        if lo == len(pts):
            return self._zs[-1]
        # the score at the quantiles, interpolated (F_ref is linear between them)
        za, zb = self._zs[lo - 1], self._zs[lo]
        return za + (zb - za) * (v - pts[lo - 1]) / (pts[lo] - pts[lo - 1])

    def _score(self, p: float) -> float:
        return _NORMAL.inv_cdf(min(max(p, self.eps), 1.0 - self.eps))

    def _set_points(self, points: list[float]) -> None:
        self.points = points
        self._zs = [self._score(i / self.QUANTILES) for i in range(self.QUANTILES + 1)]

    def _standardiser(self) -> tuple[float, float]:
        c, m, m2 = self.moments
        return m, 1.0 / (math.sqrt(m2 / c) or 1.0)

    def _collect(self, x: Any) -> bool:
        half = max(1, self.reference_size // 2)
        if self.n <= half:
            self.first.append(float(x))
            if self.n == half:
                a = sorted(self.first)
                self._set_points([a[round(i * (len(a) - 1) / self.QUANTILES)] for i in range(self.QUANTILES + 1)])
                self.first = []
            return False
        self._absorb(self._transform(x))
        return self.n >= self.reference_size

    def _level_after(self, direction: str, design: Any, mean: float) -> float:
        if isinstance(design, tuple):  # the spread after, in reference spreads
            return math.sqrt(mean)
        return max(mean, design) if direction == "up" else min(mean, design)  # at least the design's shift

    def reset_reference(self) -> None:
        self.__init__(self.threshold, self.sides, self.reference_size, self.max_reference)  # type: ignore[misc]


class RateShift(_PinnedCusum, base.BinaryDriftDetector):
    """A change of a Bernoulli rate (errors, refusals, negative feedback).

    The first reference holds at least ``min_reference`` events *and* ``min_positive``
    ones, so its rate is known to about ``1/sqrt(min_positive)`` whatever the base rate
    (DDM's degenerate warm-up, a window without a single error, cannot happen); a stream
    that stays at zero is pinned after ``max_first`` events with the rate
    ``(ones + 0.5) / (n + 1)``, so errors that appear later are a change. Designs: odds
    ratios 1.5, 2 and 4 up, 1/1.5 and 1/2 down
    (``llr = x log(p1/p0) + (1 - x) log((1 - p1)/(1 - p0))``).
    """

    DESIGNS = (("up", 1.5), ("up", 2.0), ("up", 4.0), ("down", 1 / 1.5), ("down", 0.5))

    def __init__(
        self,
        threshold: float,
        sides: str = "up",
        min_reference: int = 1000,
        min_positive: int = 50,
        max_first: int = 20_000,
        max_reference: int = 100_000,
    ) -> None:
        _PinnedCusum.__init__(self, threshold, sides, max_reference)
        base.BinaryDriftDetector.__init__(self)
        self.min_reference, self.min_positive, self.max_first = min_reference, min_positive, max_first

    def _lag_for_reference(self) -> int:
        # a small change of a low rate takes long to build evidence (x1.5 of 1 %: about
        # 11,000 events): the lag is at least ~100 expected positives, at most 20,000
        return max(self.LAG, min(int(100 / self.p0), 20_000))

    @property
    def p0(self) -> float:
        c, m, _ = self.moments
        return (m * c + 0.5) / (c + 1.0)

    def _designs(self) -> list[tuple[str, Any]]:
        return list(self.DESIGNS)

    def _p1(self, odds_ratio: float) -> float:
        p0 = self.p0
        return odds_ratio * p0 / (1.0 - p0 + odds_ratio * p0)

    def _llr_terms(self, p1: float) -> tuple[float, float]:
        """The llr of a one and of a zero, for a change from p0 to ``p1``."""
        p0, p1 = self.p0, min(max(p1, 1e-9), 1 - 1e-9)
        return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))

    def _coefficients(self, design: Any) -> tuple[float, float, float]:
        one, zero = self._llr_terms(self._p1(design))
        return one - zero, zero, 0.0

    def _back_coefficients(self, design: Any) -> tuple[float, float, float]:
        one, zero = self._llr_terms(self._p1(design))
        return zero - one, -zero, 0.0  # the negated llr: from the design's rate back to p0

    def _size(self, design: Any) -> float:
        return abs(math.log(design))

    def _transform(self, x: Any) -> float:
        return 1.0 if x else 0.0

    def _collect(self, x: Any) -> bool:
        self._absorb(self._transform(x))
        c, m, _ = self.moments
        return (c >= self.min_reference and m * c >= self.min_positive - 0.5) or c >= self.max_first

    def _level_after(self, direction: str, design: Any, mean: float) -> float:
        p1 = self._p1(design)
        return max(mean, p1) if direction == "up" else min(mean, p1)

    def reset_reference(self) -> None:
        self.__init__(  # type: ignore[misc]
            self.threshold, self.sides, self.min_reference, self.min_positive, self.max_first, self.max_reference
        )
