"""``argus fairness report``: how the model treated each segment of its users, from
ClickHouse, with fairlearn's ``MetricFrame`` (docs/fairness.md).

The report covers the primary answers of the last ``since`` seconds. Each answer is
segmented by a request metadata key (``--by locale``), or by ``tenant``, ``model`` or
``model_version``. ClickHouse aggregates per segment (counts, sums, sums of squares),
so a report over millions of answers moves a few rows per segment.

fairlearn computes the values from those aggregates: each segment's answers become
weighted samples (``sample_weight``), which gives exactly the per-answer metrics.

For each outcome it gives, per segment:
- the rate or mean, with a 95% interval from a parametric bootstrap: binomial draws for
  a rate, normal draws for a mean;
- the p-value of the segment against the rest, one-sided in the direction that is worse
  for the segment, as the online monitor tests it. The p-values are Benjamini–Hochberg
  adjusted across every segment and outcome.

The outcomes are: refused, flagged by a guard rail, harmful, error, deadline missed,
negative feedback, answer length, and latency.

For each outcome it also gives the largest difference and the smallest ratio between
segments, with intervals. For refusals and flags these are the demographic parity
difference and ratio. Where feedback gives labels (a thumbs-down or a low rating means
the answer was bad), it adds the equalized-odds difference of the guard's flags against
those labels. That says whether the rails catch bad answers equally well in every
segment.

The HTML page has one chart per outcome: the segments' values with their intervals,
and the overall value as a dashed line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RATES = {
    "refused": "refused (content_filter)",
    "flagged": "flagged by a guard rail",
    "harmful": "harmful (offensive-language rail)",
    "error": "errors",
    "deadline_missed": "deadline missed",
    "negative_feedback": "negative feedback (answers with feedback)",
}
MEANS = {"output_tokens": "answer length (tokens)", "latency_ms": "latency (ms)"}
# which way is worse for a segment (as the online monitor, services.drift.fairness.HARM)
WORSE = {"output_tokens": 0, "latency_ms": 1}
BY_COLUMNS = {"tenant": "r.tenant", "model_version": "r.model_version", "model": "r.model"}
# per segment: answers, then per rate its events and the answers it is defined on, then
# per mean its sum and sum of squares, then the (label, flag) cells of labelled answers
AGGREGATES = (
    ["n"]
    + [f"{k}_{x}" for k in RATES for x in ("k", "n")]
    + [f"{k}_{x}" for k in MEANS for x in ("s", "ss")]
    + ["eo_00", "eo_01", "eo_10", "eo_11"]
)


def query(db: str, by: str) -> str:
    """The SQL of the per-segment aggregates (parameters ``since_s`` and ``key``)."""
    segment = BY_COLUMNS.get(by, "q.segment")
    rates = ",\n".join(
        f"toFloat64(sumIf({k}, {k} IS NOT NULL)) AS {k}_k, toFloat64(countIf({k} IS NOT NULL)) AS {k}_n" for k in RATES
    )
    means = ",\n".join(f"sum(toFloat64({k})) AS {k}_s, sum(toFloat64({k}) * {k}) AS {k}_ss" for k in MEANS)
    cells = ",\n".join(
        f"toFloat64(countIf(negative_feedback = {a} AND flagged = {b})) AS eo_{a}{b}" for a in (0, 1) for b in (0, 1)
    )
    return f"""
        SELECT segment, toFloat64(count()) AS n, {rates}, {means}, {cells}
        FROM (
            SELECT if({segment} = '', '(none)', {segment}) AS segment,
                   toUInt8(r.finish_reason = 'content_filter') AS refused,
                   toUInt8(ifNull(r.guard_action, 'allow') != 'allow') AS flagged,
                   toUInt8(arrayExists(x -> JSONExtractString(x, 'rail') = 'output.offensive'
                                            AND JSONExtractBool(x, 'triggered'),
                                       JSONExtractArrayRaw(ifNull(r.guard_verdict, '{{}}'), 'rails'))) AS harmful,
                   toUInt8(r.status = 'error') AS error,
                   toUInt8(r.status = 'deadline_exceeded') AS deadline_missed,
                   f.negative AS negative_feedback,
                   r.output_tokens AS output_tokens,
                   r.latency_ms AS latency_ms
            FROM (SELECT * FROM {db}.inference_responses FINAL
                  WHERE NOT shadow AND served_at >= now64(3) - toIntervalSecond({{since_s:UInt64}})) AS r
            LEFT JOIN (SELECT request_id, any(ifNull(metadata[{{key:String}}], '')) AS segment
                       FROM {db}.inference_requests
                       WHERE created_at >= now64(3) - toIntervalSecond({{since_s:UInt64}} + 86400)
                       GROUP BY request_id) AS q ON q.request_id = r.request_id
            LEFT JOIN (SELECT request_id,
                              toNullable(toUInt8(max((kind = 'thumbs' AND score < 0.5) OR (kind = 'rating' AND score <= 2))))
                              AS negative
                       FROM {db}.feedback WHERE score IS NOT NULL GROUP BY request_id) AS f
                   ON f.request_id = r.request_id
        )
        GROUP BY segment
        ORDER BY segment
    """


def fetch(client: Any, db: str, since_s: int, by: str) -> dict[str, dict[str, float]]:
    """Per segment, its aggregates (:data:`AGGREGATES`) over the last ``since_s`` seconds."""
    # `negative` is Nullable: an answer without feedback joins NULL, not 0 (join_use_nulls is
    # not a setting a read-only role may change)
    result = client.query(query(db, by), parameters={"since_s": int(since_s), "key": by})
    names = list(result.column_names)
    return {str(row[0]): {n: float(v or 0.0) for n, v in zip(names[1:], row[1:])} for row in result.result_rows}


def aggregate(rows: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """The aggregates of per-answer columns (``segment`` and each outcome, NaN where an
    answer has no value): what the query computes, for answers already in memory."""
    out: dict[str, dict[str, float]] = {}
    seg = rows["segment"]
    for s in sorted(set(seg.tolist())):
        m = seg == s
        agg = {"n": float(m.sum())}
        for k in RATES:
            v = rows[k][m]
            ok = ~np.isnan(v)
            agg[f"{k}_k"], agg[f"{k}_n"] = float(v[ok].sum()), float(ok.sum())
        for k in MEANS:
            v = rows[k][m]
            agg[f"{k}_s"], agg[f"{k}_ss"] = float(v.sum()), float((v * v).sum())
        lab, flag = rows["negative_feedback"][m], rows["flagged"][m]
        for a in (0, 1):
            for b in (0, 1):
                agg[f"eo_{a}{b}"] = float(((lab == a) & (flag == b)).sum())
        out[str(s)] = agg
    return out


@dataclass
class OutcomeReport:
    name: str
    title: str
    kind: str  # rate | mean
    overall: float
    segments: list[dict[str, Any]] = field(default_factory=list)  # segment, n, value, ci_low, ci_high, p, p_adj
    difference: float = math.nan
    difference_ci: tuple[float, float] = (math.nan, math.nan)
    ratio: float = math.nan
    ratio_ci: tuple[float, float] = (math.nan, math.nan)


@dataclass
class FairnessReport:
    by: str
    since_s: int
    answers: int
    outcomes: list[OutcomeReport]
    equalized_odds_difference: float | None
    labelled: int

    def significant(self, q: float = 0.05) -> list[tuple[str, str, float, float]]:
        """(outcome, segment, value, adjusted p) of the segments worse than the rest at FDR ``q``."""
        return [
            (o.name, s["segment"], s["value"], s["p_adj"])
            for o in self.outcomes
            for s in o.segments
            if s["p_adj"] is not None and s["p_adj"] <= q
        ]


def _weighted(segments: list[str], per_segment: list[list[tuple[float, float]]]) -> tuple[np.ndarray, ...]:
    """Weighted samples for fairlearn: per segment, (value, weight) pairs."""
    sens, vals, weights = [], [], []
    for s, pairs in zip(segments, per_segment):
        for v, w in pairs:
            if w > 0:
                sens.append(s)
                vals.append(v)
                weights.append(w)
    return np.array(sens), np.array(vals, dtype=float), np.array(weights, dtype=float)


def _p_worse(kind: str, worse: int, seg: tuple[float, float, float], rest: tuple[float, float, float]) -> float | None:
    """One-sided p-value of the segment against the rest. ``seg``/``rest``: (n, sum,
    sum of squares). A rate: the exact conditional (binomial) test; a mean: Welch's z."""
    from scipy import stats

    (n1, s1, q1), (n2, s2, q2) = seg, rest
    if n1 < 2 or n2 < 2:
        return None
    if kind == "rate":
        total = round(s1 + s2)
        if total == 0:
            return 1.0
        return float(stats.binom.sf(round(s1) - 1, total, n1 / (n1 + n2)))
    m1, m2 = s1 / n1, s2 / n2
    v1, v2 = max((q1 - n1 * m1 * m1) / (n1 - 1), 0.0), max((q2 - n2 * m2 * m2) / (n2 - 1), 0.0)
    se = math.sqrt(v1 / n1 + v2 / n2)
    if se == 0:
        return None
    z = (m1 - m2) / se
    if worse == 0:
        return float(2 * stats.norm.sf(abs(z)))
    return float(stats.norm.sf(worse * z))


def build(
    aggregates: dict[str, dict[str, float]], by: str, since_s: int, n_boot: int = 2000, seed: int = 0
) -> FairnessReport:
    """The report from per-segment aggregates (:func:`fetch` or :func:`aggregate`)."""
    from fairlearn.metrics import MetricFrame, equalized_odds_difference, selection_rate
    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(seed)
    segments = sorted(aggregates)
    outcomes: list[OutcomeReport] = []
    pvals: list[tuple[dict[str, Any], float]] = []
    for name, title in {**RATES, **MEANS}.items():
        kind = "rate" if name in RATES else "mean"
        if kind == "rate":
            stats = [(a[f"{name}_n"], a[f"{name}_k"], a[f"{name}_k"]) for a in (aggregates[s] for s in segments)]
            pairs = [[(1.0, k), (0.0, n - k)] for n, k, _ in stats]
        else:
            stats = [(a["n"], a[f"{name}_s"], a[f"{name}_ss"]) for a in (aggregates[s] for s in segments)]
            pairs = [[(s / n, n)] if n else [] for n, s, _ in stats]
        present = [i for i, (n, _, _) in enumerate(stats) if n > 0]
        if len(present) < 2:
            outcomes.append(OutcomeReport(name, title, kind, math.nan))
            continue
        sens, vals, weights = _weighted([segments[i] for i in present], [pairs[i] for i in present])
        if kind == "rate":
            mf = MetricFrame(
                metrics={name: selection_rate},
                y_true=vals,
                y_pred=vals,
                sensitive_features=sens,
                sample_params={name: {"sample_weight": weights}},
            )
        else:

            def weighted_mean(y_true: Any, y_pred: Any, sample_weight: Any) -> float:
                return float(np.average(y_pred, weights=sample_weight))

            mf = MetricFrame(
                metrics={name: weighted_mean},
                y_true=vals,
                y_pred=vals,
                sensitive_features=sens,
                sample_params={name: {"sample_weight": weights}},
            )
        by_group = mf.by_group[name]
        n_all = sum(stats[i][0] for i in present)
        report = OutcomeReport(name, title, kind, sum(stats[i][1] for i in present) / n_all)
        report.difference = float(mf.difference()[name])
        report.ratio = float(mf.ratio()[name])
        draws = np.empty((n_boot, len(present)))
        for j, i in enumerate(present):
            n, s, q = stats[i]
            if kind == "rate":
                draws[:, j] = rng.binomial(int(n), min(max(s / n, 0.0), 1.0), size=n_boot) / n
            else:
                mean = s / n
                sd = math.sqrt(max((q - n * mean * mean) / (n - 1), 0.0)) if n > 1 else 0.0
                draws[:, j] = rng.normal(mean, sd / math.sqrt(n), size=n_boot)
        diff = draws.max(axis=1) - draws.min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(draws.max(axis=1) > 0, draws.min(axis=1) / draws.max(axis=1), np.nan)
        report.difference_ci = (float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975)))
        if np.isfinite(ratio).any():
            report.ratio_ci = (float(np.nanquantile(ratio, 0.025)), float(np.nanquantile(ratio, 0.975)))
        totals = [sum(stats[i][x] for i in present) for x in range(3)]
        for j, i in enumerate(present):
            seg_stats = stats[i]
            rest = tuple(totals[x] - seg_stats[x] for x in range(3))
            worse = 1 if kind == "rate" else WORSE[name]
            entry = {
                "segment": segments[i],
                "n": int(seg_stats[0]),
                "value": float(by_group[segments[i]]),
                "ci_low": float(np.quantile(draws[:, j], 0.025)),
                "ci_high": float(np.quantile(draws[:, j], 0.975)),
                "p": _p_worse(kind, worse, seg_stats, rest),
                "p_adj": None,
            }
            report.segments.append(entry)
            if entry["p"] is not None:
                pvals.append((entry, entry["p"]))
        outcomes.append(report)
    if pvals:
        for (entry, _), adj in zip(pvals, false_discovery_control([p for _, p in pvals], method="bh")):
            entry["p_adj"] = float(adj)

    # the guard's flags against feedback labels, as weighted (label, flag) cells
    labelled = sum(aggregates[s][f"eo_{a}{b}"] for s in segments for a in (0, 1) for b in (0, 1))
    eod = None
    cells = [[((a, b), aggregates[s][f"eo_{a}{b}"]) for a in (0, 1) for b in (0, 1)] for s in segments]
    with_labels = [i for i, c in enumerate(cells) if sum(w for _, w in c) > 0]
    if len(with_labels) >= 2:
        sens, y_true, y_pred, w = [], [], [], []
        for i in with_labels:
            for (a, b), weight in cells[i]:
                if weight > 0:
                    sens.append(segments[i])
                    y_true.append(a)
                    y_pred.append(b)
                    w.append(weight)
        eod = float(
            equalized_odds_difference(
                np.array(y_true), np.array(y_pred), sensitive_features=np.array(sens), sample_weight=np.array(w)
            )
        )
    answers = int(sum(aggregates[s]["n"] for s in segments))
    return FairnessReport(by, since_s, answers, outcomes, eod, int(labelled))


def _fmt(v: float | None, pct: bool) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.1%}" if pct else f"{v:,.1f}"


def html_page(report: FairnessReport) -> str:
    from services import report as r

    summary_rows = []
    for o in report.outcomes:
        if not o.segments:
            continue
        pct = o.kind == "rate"
        label = "demographic parity" if o.name in ("refused", "flagged") else "largest gap between segments"
        summary_rows.append(
            (
                f"{o.title}: {label} difference",
                _fmt(o.difference, pct),
                f"{_fmt(o.difference_ci[0], pct)} – {_fmt(o.difference_ci[1], pct)}",
            )
        )
        if pct:
            summary_rows.append(
                (
                    f"{o.title}: {label} ratio",
                    f"{o.ratio:.2f}" if math.isfinite(o.ratio) else "n/a",
                    f"{o.ratio_ci[0]:.2f} – {o.ratio_ci[1]:.2f}" if math.isfinite(o.ratio_ci[0]) else "n/a",
                )
            )
    eod = report.equalized_odds_difference
    summary_rows.append(
        (
            "equalized-odds difference of the guard flags against negative feedback",
            "n/a" if eod is None else f"{eod:.3f}",
            "",
        )
    )
    worse = report.significant()
    sections = [
        (
            "Summary",
            f"<p>{report.answers} primary answers of the last {report.since_s / 86400:.1f} days, by "
            f"<code>{report.by}</code>; {report.labelled} with feedback labels. Values: fairlearn MetricFrame; "
            "intervals: 95%, parametric bootstrap; p: one-sided (the segment worse than the rest), "
            "Benjamini–Hochberg adjusted across every segment and outcome.</p>"
            + r.table(("measure", "value", "95% interval"), summary_rows)
            + (
                "<p>Treated worse than the rest (FDR 5%): "
                + ", ".join(f"<b>{s}</b> on {o} ({v:.3g}, p {p:.2g})" for o, s, v, p in worse)
                + "</p>"
                if worse
                else "<p>No segment is treated significantly worse than the rest (FDR 5%).</p>"
            ),
        )
    ]
    for o in report.outcomes:
        if not o.segments:
            sections.append((o.title, "<p>No data, or a single segment.</p>"))
            continue
        pct = o.kind == "rate"
        chart = r.bars(
            o.title,
            [s["segment"] for s in o.segments],
            [s["value"] for s in o.segments],
            [s["ci_low"] for s in o.segments],
            [s["ci_high"] for s in o.segments],
            reference=o.overall,
            ylabel="rate" if pct else o.title,
        )
        rows = [
            (
                s["segment"],
                s["n"],
                _fmt(s["value"], pct),
                f"{_fmt(s['ci_low'], pct)} – {_fmt(s['ci_high'], pct)}",
                "n/a" if s["p_adj"] is None else f"{s['p_adj']:.2g}",
            )
            for s in o.segments
        ]
        sections.append((o.title, chart + r.table(("segment", "answers", "value", "95% interval", "p (BH)"), rows)))
    return r.page(f"Argus fairness report by {report.by}", sections)
