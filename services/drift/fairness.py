"""Fairness on live traffic: does the model treat one segment of its users differently?

Segments come from request metadata keys chosen per deployment (``locale``, ``region``,
``age_band``, ``plan``…) and from what Argus derives: the tenant and the script of the
prompt (Latin, Cyrillic, Han…). Outcomes come from the answer:

- rates: refused (``finish_reason == "content_filter"``), harmful (the offensive-language
  rail triggered), error, deadline missed;
- means: answer length (output tokens), latency, confidence (mean log-probability).

For each model, a :class:`FairnessMonitor` keeps the last ``window`` answers. Every
``evaluate_every`` answers it compares each segment with the rest of its dimension,
outcome by outcome:

- for the rates, the exact conditional test of a two-proportion comparison;
- for the means, Welch's z-test (large samples, so normal).

Both are one-sided, in the direction that is worse for the segment (:data:`HARM`).

The p-values of one evaluation (every dimension, segment and outcome) are one family,
and the Benjamini–Hochberg procedure at false-discovery rate ``fdr`` picks the
significant ones. Under no disparity at all this bounds the chance of any alarm in one
evaluation by ``fdr``. A finding also needs:

- at least ``min_segment`` answers in the segment and in the rest, and ``min_events``
  outcome events for a rate;
- an effect worth an alarm: a rate ratio of at least ``min_ratio`` (either way) and a
  difference of at least ``min_difference``, or a standardised mean difference of at
  least ``min_effect`` for a mean.

The rates' p-values are exact (the segment's count of events is binomial given the
dimension's events, under no disparity); the normal tail would be far too small for the
few events a rare outcome has, and false alarms would follow. A finding opens an
episode: one ``started`` DriftEvent (detector ``fairness.rate`` or
``fairness.mean``, feature ``fairness.<outcome>[<dimension>=<segment>]``). It carries
the segment and the rest as current and reference summaries, the difference with its 95%
confidence interval, the ratio and the p-value. The episode closes (``ended``) after
``clear_after`` evaluations in which the disparity is not even nominally significant
(``hold_p``) or has become too small. The drift service publishes these
events on the drift-events topic; the alerting rule ``FairnessDisparity`` fires on them,
and a retraining policy can take them as evidence.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import binom

from services.common.pii import maybe_pii

RATES = ("refused", "harmful", "error", "deadline_missed")
MEANS = ("output_tokens", "latency_ms", "confidence")
# which way is worse for a segment: more refusals, harm, errors, missed deadlines and
# latency, less confidence; answer length either way. The tests are one-sided that way, so
# the other segments, which now look better than "the rest" that includes the one treated
# worse, raise nothing.
HARM = {
    "refused": 1,
    "harmful": 1,
    "error": 1,
    "deadline_missed": 1,
    "latency_ms": 1,
    "confidence": -1,
    "output_tokens": 0,
}
OTHER = "(other)"
STATE_VERSION = 1
_NAMESPACE = uuid.UUID("6c8f3a52-7f0e-4f9b-a1d4-3c2b8e9f0a17")


@dataclass(frozen=True)
class FairnessConfig:
    dimensions: tuple[str, ...] = ("tenant", "script")  # metadata keys, and the derived tenant/script
    window: int = 8000
    evaluate_every: int = 250
    fdr: float = 1e-4
    min_segment: int = 200
    min_events: int = 10
    min_ratio: float = 1.5
    min_difference: float = 0.01
    min_effect: float = 0.2
    clear_after: int = 8
    # an open episode stays open while its test stays below this p-value (and its effect
    # large enough): no flicker of ended/started while a disparity hovers at the threshold
    hold_p: float = 0.05
    max_segments: int = 50  # per dimension; later values are counted as "(other)"


def script_of(text: str, limit: int = 512) -> str:
    """The Unicode script most letters of ``text`` belong to (``LATIN``, ``CYRILLIC``,
    ``CJK``, ``ARABIC``…), or ``NONE`` without letters; the first ``limit`` characters."""
    counts: dict[str, int] = {}
    for ch in text[:limit]:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            script = name.split(" ", 1)[0] if name else "UNKNOWN"
            counts[script] = counts.get(script, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else "NONE"


def segments_of(request: dict[str, Any], dimensions: tuple[str, ...]) -> dict[str, str]:
    """A request's segment in each dimension. Metadata values are untrusted: cut to 64
    characters, and a value that might hold personal data is not used as a segment name."""
    meta = request.get("metadata") or {}
    out: dict[str, str] = {}
    for dim in dimensions:
        if dim == "tenant":
            value = str(request.get("tenant") or "")
        elif dim == "script":
            value = script_of(" ".join(str(m.get("content") or "") for m in request.get("messages") or []))
        else:
            value = str(meta.get(dim) or "")
        if not value:
            continue
        value = value[:64]
        out[dim] = "(redacted)" if maybe_pii(value) else value
    return out


def outcomes_of(response: dict[str, Any]) -> dict[str, float | None]:
    """The outcomes of one answer (InferenceResponse); ``None`` where it has no value."""
    harmful = 0.0
    verdict = response.get("guard_verdict")
    if verdict:
        try:
            rails = json.loads(verdict).get("rails") or []
            harmful = float(
                any(isinstance(r, dict) and r.get("rail") == "output.offensive" and r.get("triggered") for r in rails)
            )
        except (ValueError, AttributeError):
            harmful = 0.0
    return {
        "refused": float(response.get("finish_reason") == "content_filter"),
        "harmful": harmful,
        "error": float(response.get("status") == "error"),
        "deadline_missed": float(response.get("status") == "deadline_exceeded"),
        "output_tokens": float(response.get("output_tokens") or 0),
        "latency_ms": float(response.get("latency_ms") or 0.0),
        "confidence": response.get("mean_logprob"),
    }


def _phi_upper(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def benjamini_hochberg(p_values: list[float], q: float) -> list[bool]:
    """Which hypotheses the Benjamini–Hochberg step-up procedure rejects at FDR ``q``."""
    m = len(p_values)
    order = sorted(range(m), key=p_values.__getitem__)
    cutoff = -1
    for rank, i in enumerate(order, start=1):
        if p_values[i] <= q * rank / m:
            cutoff = rank
    rejected = [False] * m
    for rank, i in enumerate(order, start=1):
        rejected[i] = rank <= cutoff
    return rejected


@dataclass
class _Sums:
    n: float = 0.0
    s: dict[str, float] = field(default_factory=dict)  # outcome -> sum
    ss: dict[str, float] = field(default_factory=dict)  # outcome -> sum of squares (means)
    k: dict[str, float] = field(default_factory=dict)  # outcome -> answers with a value

    def add(self, outcomes: dict[str, float | None], sign: float) -> None:
        self.n += sign
        for name, v in outcomes.items():
            if v is None:
                continue
            self.k[name] = self.k.get(name, 0.0) + sign
            self.s[name] = self.s.get(name, 0.0) + sign * v
            if name in MEANS:
                self.ss[name] = self.ss.get(name, 0.0) + sign * v * v


@dataclass
class Finding:
    dimension: str
    segment: str
    outcome: str
    kind: str  # rate | mean
    statistic: float
    p_value: float
    segment_value: float
    rest_value: float
    difference: float
    ci_low: float
    ci_high: float
    ratio: float | None
    n_segment: int
    n_rest: int


class FairnessMonitor:
    """The fairness test of one model's answers (see the module doc)."""

    def __init__(self, model: str, config: FairnessConfig) -> None:
        self.model = model
        self.config = config
        self.window: deque[tuple[dict[str, str], dict[str, float | None]]] = deque()
        self.sums: dict[str, dict[str, _Sums]] = {}  # dimension -> segment -> sums
        self.position = 0
        self.open: dict[str, dict[str, Any]] = {}  # episode key -> {"episode": id, "quiet": n}
        self.holding: set[str] = set()  # open episodes whose disparity the last evaluation still saw

    # -- observations ----------------------------------------------------------------
    def observe(self, segments: dict[str, str], outcomes: dict[str, float | None], now_ms: int | None = None) -> list:
        """One answer with its request's segments; the DriftEvents of this step."""
        c = self.config
        segs = {}
        for dim, seg in segments.items():
            if dim not in c.dimensions:
                continue
            known = self.sums.setdefault(dim, {})
            if seg not in known and len(known) - ("" in known) >= c.max_segments:
                seg = OTHER
            segs[dim] = seg
        self._add(segs, outcomes, 1.0)
        self.window.append((segs, outcomes))
        if len(self.window) > c.window:
            old_segs, old_outcomes = self.window.popleft()
            self._add(old_segs, old_outcomes, -1.0)
        self.position += 1
        if self.position % c.evaluate_every:
            return []
        return self._events(self.evaluate(), now_ms or int(time.time() * 1000))

    def _add(self, segs: dict[str, str], outcomes: dict[str, float | None], sign: float) -> None:
        for dim, seg in segs.items():
            by_seg = self.sums.setdefault(dim, {})
            by_seg.setdefault(seg, _Sums()).add(outcomes, sign)
            by_seg.setdefault("", _Sums()).add(outcomes, sign)  # "" = the whole dimension

    # -- the test ---------------------------------------------------------------------
    def evaluate(self) -> list[Finding]:
        """Every (dimension, segment, outcome) test on the current window, Benjamini–
        Hochberg over all of them, then the size and effect conditions."""
        c = self.config
        tests: list[Finding] = []
        for dim, by_seg in self.sums.items():
            total = by_seg.get("")
            if total is None:
                continue
            for seg, s in by_seg.items():
                if seg == "" or s.n < c.min_segment or total.n - s.n < c.min_segment:
                    continue
                for outcome in RATES:
                    f = self._rate(dim, seg, outcome, s, total)
                    if f is not None:
                        tests.append(f)
                for outcome in MEANS:
                    f = self._mean(dim, seg, outcome, s, total)
                    if f is not None:
                        tests.append(f)
        if not tests:
            return []
        rejected = benjamini_hochberg([t.p_value for t in tests], c.fdr)
        self.holding = {
            self.feature(t)
            for t in tests
            if self.feature(t) in self.open and t.p_value <= c.hold_p and self._large_enough(t)
        }
        return [t for t, r in zip(tests, rejected) if r and self._large_enough(t)]

    def _rate(self, dim: str, seg: str, outcome: str, s: _Sums, total: _Sums) -> Finding | None:
        n1, n2 = s.k.get(outcome, 0.0), total.k.get(outcome, 0.0) - s.k.get(outcome, 0.0)
        if n1 < self.config.min_segment or n2 < self.config.min_segment:
            return None
        x1 = s.s.get(outcome, 0.0)
        x2 = total.s.get(outcome, 0.0) - x1
        if x1 + x2 < self.config.min_events:
            return None
        p1, p2 = x1 / n1, x2 / n2
        pooled = (x1 + x2) / (n1 + n2)
        se0 = math.sqrt(max(pooled * (1 - pooled) * (1 / n1 + 1 / n2), 1e-300))
        z = (p1 - p2) / se0
        se = math.sqrt(max(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2, 0.0))
        # the p-value is exact, not the z's normal tail (far too small with a few events):
        # given the events of the dimension, the segment's count is binomial with the
        # segment's share of the answers under no disparity (the conditional test)
        events, share = round(x1 + x2), n1 / (n1 + n2)
        k = round(x1)
        upper = float(binom.sf(k - 1, events, share))  # harm: more events than the share
        p_value = upper if HARM[outcome] > 0 else min(1.0, 2 * min(float(binom.cdf(k, events, share)), upper))
        d = p1 - p2
        ratio = p1 / p2 if p2 > 0 else math.inf
        return Finding(dim, seg, outcome, "rate", z, p_value, p1, p2, d, d - 1.96 * se, d + 1.96 * se, ratio,
                       int(n1), int(n2))  # fmt: skip

    def _mean(self, dim: str, seg: str, outcome: str, s: _Sums, total: _Sums) -> Finding | None:
        n1 = s.k.get(outcome, 0.0)
        n2 = total.k.get(outcome, 0.0) - n1
        if n1 < self.config.min_segment or n2 < self.config.min_segment:
            return None
        s1, s2 = s.s.get(outcome, 0.0), total.s.get(outcome, 0.0) - s.s.get(outcome, 0.0)
        q1, q2 = s.ss.get(outcome, 0.0), total.ss.get(outcome, 0.0) - s.ss.get(outcome, 0.0)
        m1, m2 = s1 / n1, s2 / n2
        v1 = max((q1 - n1 * m1 * m1) / (n1 - 1), 0.0)
        v2 = max((q2 - n2 * m2 * m2) / (n2 - 1), 0.0)
        se = math.sqrt(v1 / n1 + v2 / n2)
        if se == 0:
            return None
        z = (m1 - m2) / se
        d = m1 - m2
        harm = HARM[outcome]
        p_value = _phi_upper(z) if harm == 0 else 0.5 * math.erfc(harm * z / math.sqrt(2.0))
        return Finding(dim, seg, outcome, "mean", z, p_value, m1, m2, d, d - 1.96 * se, d + 1.96 * se, None,
                       int(n1), int(n2))  # fmt: skip

    def _large_enough(self, f: Finding) -> bool:
        c = self.config
        if f.kind == "rate":
            ratio = f.ratio if f.ratio is not None else 1.0
            return abs(f.difference) >= c.min_difference and (ratio >= c.min_ratio or ratio <= 1 / c.min_ratio)
        by_seg = self.sums[f.dimension]
        total = by_seg[""]
        n = total.k.get(f.outcome, 0.0)
        mean = total.s.get(f.outcome, 0.0) / n
        sd = math.sqrt(max((total.ss.get(f.outcome, 0.0) - n * mean * mean) / max(n - 1, 1), 0.0))
        return sd > 0 and abs(f.difference) / sd >= c.min_effect

    # -- episodes and events -------------------------------------------------------------
    @staticmethod
    def feature(f: Finding | tuple[str, str, str]) -> str:
        dim, seg, outcome = (f.dimension, f.segment, f.outcome) if isinstance(f, Finding) else f
        return f"fairness.{outcome}[{dim}={seg}]"

    def _events(self, findings: list[Finding], now_ms: int) -> list[dict[str, Any]]:
        events = []
        seen = set()
        for f in findings:
            key = self.feature(f)
            seen.add(key)
            if key in self.open:
                self.open[key]["quiet"] = 0
                continue
            episode = str(uuid.uuid5(_NAMESPACE, f"{self.model}|{key}|{self.position}"))
            self.open[key] = {"episode": episode, "quiet": 0, "finding": _finding_json(f)}
            events.append(self._event(f, "started", episode, episode, now_ms))
        for key in list(self.open):
            if key in seen or key in self.holding:  # still there, if not as strongly as to open it
                self.open[key]["quiet"] = 0
                continue
            self.open[key]["quiet"] += 1
            if self.open[key]["quiet"] >= self.config.clear_after:
                ep = self.open.pop(key)
                f = Finding(**ep["finding"])
                event_id = str(uuid.uuid5(_NAMESPACE, f"{ep['episode']}|ended|{self.position}"))
                events.append(self._event(f, "ended", event_id, ep["episode"], now_ms))
        return events

    def _event(self, f: Finding, status: str, event_id: str, episode: str, now_ms: int) -> dict[str, Any]:
        summary = {"n": float(f.n_segment), "value": f.segment_value}
        rest = {"n": float(f.n_rest), "value": f.rest_value}
        params = {
            "dimension": f.dimension,
            "segment": f.segment,
            "outcome": f.outcome,
            "difference": f"{f.difference:.6g}",
            "ci95_low": f"{f.ci_low:.6g}",
            "ci95_high": f"{f.ci_high:.6g}",
            "fdr": str(self.config.fdr),
            "window": str(self.config.window),
            "detected_at_position": str(self.position),
        }
        if f.ratio is not None:
            params["ratio"] = f"{f.ratio:.6g}" if math.isfinite(f.ratio) else "inf"
        return {
            "event_id": event_id,
            "detected_at": now_ms,
            "model": self.model,
            "model_version": "*",
            "feature": self.feature(f),
            "detector": f"fairness.{f.kind}",
            "statistic": float(abs(f.statistic)),
            "threshold": 0.0,
            "p_value": float(f.p_value),
            "severity": "critical" if f.outcome in ("refused", "harmful") else "warning",
            "reference_window_size": f.n_rest,
            "current_window_size": f.n_segment,
            "reference_summary": rest,
            "current_summary": summary,
            "change_offset": max(self.position - self.config.window, 0),
            "change_time": None,
            "example_request_ids": [],
            "detector_params": params,
            "status": status,
            "direction": "up" if f.difference > 0 else "down",
            "episode_id": episode,
        }

    # -- state (JSON, never pickle) -------------------------------------------------------
    def dump(self) -> bytes:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "model": self.model,
                "position": self.position,
                # compact: each answer as its segment per dimension and its outcomes, in order
                "dimensions": list(self.config.dimensions),
                "outcomes": list(RATES + MEANS),
                "window": [
                    [[s.get(d) for d in self.config.dimensions], [o.get(k) for k in RATES + MEANS]]
                    for s, o in self.window
                ],
                "open": self.open,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def load(cls, raw: bytes, config: FairnessConfig) -> "FairnessMonitor":
        doc = json.loads(raw)
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"fairness state version {doc.get('version')!r} is not {STATE_VERSION}")
        mon = cls(str(doc["model"]), config)
        dims, names = list(doc["dimensions"]), list(doc["outcomes"])
        for seg_list, out_list in doc["window"][-config.window :]:
            segs = {str(d): str(v) for d, v in zip(dims, seg_list) if v is not None and d in config.dimensions}
            outcomes = {k: (None if v is None else float(v)) for k, v in zip(names, out_list) if k in RATES + MEANS}
            mon._add(segs, outcomes, 1.0)
            mon.window.append((segs, outcomes))
        mon.position = int(doc["position"])
        mon.open = {str(k): dict(v) for k, v in dict(doc["open"]).items()}
        return mon


def _finding_json(f: Finding) -> dict[str, Any]:
    d = dict(f.__dict__)
    if d["ratio"] is not None and not math.isfinite(d["ratio"]):
        d["ratio"] = 1e300
    return d


class SegmentJoin:
    """Answers joined with their requests' segments, whichever arrives first: requests are
    remembered by request_id (the last ``size``), and so are answers whose request has not
    been seen yet (a worker catching up reads both topics at once). An answer is tested
    once both are there. Answers still waiting when they leave the window, or whose request
    another worker consumed, are never tested: ``misses`` counts the evicted ones (metric
    ``argus_fairness_unjoined_total``)."""

    def __init__(self, dimensions: tuple[str, ...], size: int = 200_000) -> None:
        from services.common.lru import RecentMap

        self.dimensions = dimensions
        self.segments = RecentMap(size)  # request_id -> segments
        self.waiting = RecentMap(size)  # request_id -> (model, outcomes) of an answer before its request
        self.misses = 0

    def remember(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """Remember a request's segments; the observation of its answer if that came first."""
        rid = str(request["request_id"])
        segs = segments_of(request, self.dimensions)
        self.segments.put(rid, segs)
        early = self.waiting.pop(rid) if rid in self.waiting else None
        if early is None:
            return None
        model, outcomes = early
        return f"{model}|fairness", {"fairness": {"segments": segs, "outcomes": outcomes}}

    def observation(self, response: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """(stream key, features-topic payload) for a primary answer whose request is known;
        ``None`` for a shadow answer, or one that now waits for its request."""
        if response.get("shadow"):
            return None
        rid = str(response["request_id"])
        segs = self.segments.get(rid)
        if segs is None:
            if len(self.waiting) >= self.waiting.size:
                self.misses += 1  # the oldest waiting answer is evicted untested
            self.waiting.put(rid, (str(response["model"]), outcomes_of(response)))
            return None
        return f"{response['model']}|fairness", {"fairness": {"segments": segs, "outcomes": outcomes_of(response)}}
