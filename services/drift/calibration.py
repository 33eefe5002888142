"""Detector thresholds chosen for a false-alarm budget, measured on stationary streams.

    python -m services.drift.calibration [--events 500000] [--budget 1e-5] [--detectors mean_shift,rate_shift]

For each detector it simulates stationary streams (skewed and heavy-tailed lognormal and
normal values, a fixed categorical mix, Bernoulli rates from 0.5 % to 50 %), picks the
most sensitive setting whose false alarms stay within the budget (default: at most 1
per 100,000 events per detector), then measures the false-alarm rate of the chosen
setting on fresh streams, and writes both to ``calibration.json`` (read by the drift
service) and prints the table that ``docs/drift.md`` quotes.

Windowed tests are checked every ``step`` events, so their statistic is calibrated on
its distribution under no change. The CUSUMs (:mod:`services.drift.cusum`) are
calibrated on streams of 20,000 events that each pin their own reference, so the error
of an estimated reference is part of what the budget covers; one threshold serves every
shape and base rate (the largest any needs).
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

import numpy as np

from services.drift.cusum import MeanShift, RateShift
from services.drift.detectors import WindowChi2, WindowKS

CALIBRATION_FILE = Path(str(files("services.drift") / "calibration.json"))  # package data
WINDOW = {"reference_size": 500, "window": 200, "step": 20}


def stationary_numeric(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.lognormal(mean=3.5, sigma=0.6, size=n)  # prompt lengths, latencies: skewed, positive


def stationary_categorical(rng: np.random.Generator, n: int) -> list[str]:
    cats = np.array(["en", "fr", "es", "de", "other"])
    return list(cats[rng.choice(5, size=n, p=[0.7, 0.1, 0.1, 0.05, 0.05])])


def _alarms(make: Callable[[], Any], values: Any, streams: int) -> int:
    total = 0
    chunk = len(values) // streams
    for s in range(streams):
        det = make()
        for i, x in enumerate(values[s * chunk : (s + 1) * chunk]):
            if det.update(x, "f", i) is not None:
                total += 1
    return total


def _max_statistic(kind: str, values: Any, streams: int) -> float:
    """Largest windowed statistic seen under no change (threshold = +inf while measuring)."""
    best = 0.0
    chunk = len(values) // streams
    for s in range(streams):
        det = (WindowKS if kind == "ks" else WindowChi2)(threshold=-1.0, **WINDOW)
        det.in_alarm = False
        orig = det.update
        for i, x in enumerate(values[s * chunk : (s + 1) * chunk]):
            alarm = orig(x, "f", i)
            det.in_alarm = False
            if alarm is not None:
                best = max(best, alarm.statistic)
    return best


NUMERIC_SHAPES = {
    "lognormal(0.6)": lambda rng, n: rng.lognormal(3.5, 0.6, n),
    "lognormal(1.0)": lambda rng, n: rng.lognormal(3.5, 1.0, n),
    "normal": lambda rng, n: rng.normal(0.0, 1.0, n),
}
BASE_RATES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
CUSUM_STREAM = 20_000  # events per simulated stream: each pins its own reference


def _cusum_threshold(
    make: Callable[[], Any], draw: Callable[[Any, int], Any], events: int, allowed: float, seed: int
) -> float:
    """The smallest threshold whose excursions above it stay within ``allowed`` (a CUSUM's
    alarms under no change are its excursions above the threshold; with several designs
    each is counted, an upper bound)."""
    rng = np.random.default_rng(seed)
    maxima: list[float] = []
    for _ in range(max(1, events // CUSUM_STREAM)):
        det = make()
        det.calibrating = maxima
        for x in draw(rng, CUSUM_STREAM):
            det.update(x)
    top = sorted(maxima, reverse=True)
    k = int(allowed)
    return float(top[k]) if len(top) > k else float(top[-1] if top else 1.0)


def _cusum_alarms(make: Callable[[], Any], draw: Callable[[Any, int], Any], events: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(max(1, events // CUSUM_STREAM)):
        det = make()
        for x in draw(rng, CUSUM_STREAM):
            det.update(x)
            alarms += det.drift_detected
    return alarms


DETECTORS = ("ks", "chi2", "mean_shift", "mean_shift_small", "adwin_warmup", "rate_shift")


def calibrate(
    events: int = 500_000,
    budget: float = 1e-5,
    seed: int = 1,
    streams: int = 50,
    only: tuple[str, ...] = DETECTORS,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    fresh = np.random.default_rng(seed + 1000)
    allowed = budget * events
    out: dict[str, Any] = {"budget_per_event": budget, "window": WINDOW, "detectors": {}}

    num, num2 = stationary_numeric(rng, events), stationary_numeric(fresh, events)
    cat, cat2 = stationary_categorical(rng, events), stationary_categorical(fresh, events)

    for kind, train, test in (("ks", num, num2), ("chi2", cat, cat2)):
        if kind not in only:
            continue
        t0 = time.perf_counter()
        threshold = _max_statistic(kind, train, streams) * 1.1  # margin over the largest value under no change
        cls = WindowKS if kind == "ks" else WindowChi2
        fa = _alarms(lambda cls=cls, threshold=threshold: cls(threshold=threshold, **WINDOW), test, streams)
        out["detectors"][kind] = {
            "threshold": round(threshold, 6),
            "false_alarms": fa,
            "false_alarms_per_100k": fa / events * 1e5,
            "seconds": round(time.perf_counter() - t0, 1),
            "events": events,
        }

    # CUSUMs: one threshold for every stream shape (numeric) or base rate (binary): the
    # largest any of them needs, with half the budget as a margin for unseen streams (as
    # for the windowed tests);
    # then the false alarms of that threshold on fresh streams of each.
    for kind, cases, make in (
        ("mean_shift", NUMERIC_SHAPES, lambda h: MeanShift(h, sides="both")),
        # sampled features (prompt-embedding distance): a 1,000-value reference
        ("mean_shift_small", NUMERIC_SHAPES, lambda h: MeanShift(h, sides="both", reference_size=1000)),
        (
            "rate_shift",
            {f"rate {p:g}": (lambda p: lambda r, n: r.random(n) < p)(p) for p in BASE_RATES},
            lambda h: RateShift(h, sides="both"),
        ),
    ):
        if kind not in only:
            continue
        t0 = time.perf_counter()
        h = max(
            _cusum_threshold(lambda: make(float("inf")), draw, events, allowed / 2, seed + i)
            for i, draw in enumerate(cases.values())
        )
        h = round(h, 3)
        per_case = {
            name: _cusum_alarms(lambda: make(h), draw, events, seed + 2000 + i)
            for i, (name, draw) in enumerate(cases.items())
        }
        worst = max(per_case.values())
        out["detectors"][kind] = {
            "threshold": h,
            "false_alarms": worst,
            "false_alarms_per_100k": worst / events * 1e5,
            "false_alarms_by_case": per_case,
            "seconds": round(time.perf_counter() - t0, 1),
            "events": events,
        }
    if "adwin_warmup" in only:
        out["detectors"]["adwin_warmup"] = _calibrate_warmup(events, seed)
    return out


def _calibrate_warmup(events: int, seed: int, per_stream: float = 0.01, warmup: int = 2000) -> dict[str, Any]:
    """The warm-up ADWIN lives for a stream's first ``warmup`` events only, so its budget
    is per stream: the largest ``delta`` (most sensitive) for which at most
    ``per_stream`` of stationary streams of every shape raise anything in that time;
    then the share of fresh streams that do."""
    from services.drift.detectors import WarmupADWIN

    t0 = time.perf_counter()
    n_streams = max(100, events // warmup)

    def share(delta: float, base: int) -> dict[str, float]:
        out = {}
        for i, (name, draw) in enumerate(NUMERIC_SHAPES.items()):
            rng = np.random.default_rng(base + i)
            hits = 0
            for _ in range(n_streams):
                det = WarmupADWIN(delta, warmup)
                hits += any(det.update(float(x), "f", k) is not None for k, x in enumerate(draw(rng, warmup)))
            out[name] = hits / n_streams
        return out

    chosen = 1e-7
    for delta in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):  # most sensitive first
        if max(share(delta, seed + 5000).values()) <= per_stream / 2:
            chosen = delta
            break
    fresh = share(chosen, seed + 6000)
    worst = max(fresh.values())
    return {
        "delta": chosen,
        "false_alarms": round(worst * n_streams),
        "false_alarms_per_100k": worst * n_streams / (n_streams * warmup) * 1e5,
        "streams_with_a_false_alarm": fresh,
        "per_stream_budget": per_stream,
        "seconds": round(time.perf_counter() - t0, 1),
        "events": n_streams * warmup,
    }


def load() -> dict[str, Any]:
    return json.loads(CALIBRATION_FILE.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--budget", type=float, default=1e-5)
    ap.add_argument("--out", type=Path, default=CALIBRATION_FILE)
    ap.add_argument(
        "--detectors",
        default=",".join(DETECTORS),
        help="comma-separated subset to recalibrate; the others keep their entries in --out",
    )
    args = ap.parse_args(argv)
    only = tuple(d for d in args.detectors.split(",") if d)
    if unknown := set(only) - set(DETECTORS):
        ap.error(f"unknown detectors: {', '.join(sorted(unknown))}")
    result = calibrate(args.events, args.budget, only=only)
    if set(only) != set(DETECTORS) and args.out.exists():
        result["detectors"] = json.loads(args.out.read_text())["detectors"] | result["detectors"]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| detector | setting | false alarms (fresh stationary streams) | per 100k events |")
    print("|---|---|---|---|")
    for name, d in result["detectors"].items():
        setting = {k: d[k] for k in ("threshold", "delta") if k in d}
        print(f"| {name} | {setting} | {d['false_alarms']} in {d['events']:,} | {d['false_alarms_per_100k']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
