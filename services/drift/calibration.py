"""Detector thresholds chosen for a false-alarm budget, measured on stationary streams.

    python -m services.drift.calibration [--events 500000] [--budget 1e-5]

For each detector it simulates stationary streams (skewed lognormal lengths and
latencies, normal confidences, a fixed categorical mix, a fixed Bernoulli rate), picks
the most sensitive setting whose false alarms stay within the budget (default: at most
1 per 100,000 events per detector), then measures the false-alarm rate of the chosen
setting on fresh streams, and writes both to ``calibration.json`` (read by the drift
service) and prints the table that ``docs/drift.md`` quotes.

Windowed tests are checked every ``step`` events, so their statistic is calibrated on
its distribution under no change; river's detectors are calibrated through their own
parameters (ADWIN's ``delta``, DDM's ``drift_threshold``).
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

import numpy as np

from services.drift.detectors import RiverBinary, RiverNumeric, WindowChi2, WindowKS

CALIBRATION_FILE = Path(str(files("services.drift") / "calibration.json"))  # package data
WINDOW = {"reference_size": 500, "window": 200, "step": 20}


def stationary_numeric(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.lognormal(mean=3.5, sigma=0.6, size=n)  # prompt lengths, latencies: skewed, positive


def stationary_categorical(rng: np.random.Generator, n: int) -> list[str]:
    cats = np.array(["en", "fr", "es", "de", "other"])
    return list(cats[rng.choice(5, size=n, p=[0.7, 0.1, 0.1, 0.05, 0.05])])


def stationary_binary(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.random(n) < 0.05


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


def calibrate(events: int = 500_000, budget: float = 1e-5, seed: int = 1, streams: int = 50) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    fresh = np.random.default_rng(seed + 1000)
    allowed = budget * events
    out: dict[str, Any] = {"budget_per_event": budget, "events": events, "window": WINDOW, "detectors": {}}

    num, num2 = stationary_numeric(rng, events), stationary_numeric(fresh, events)
    cat, cat2 = stationary_categorical(rng, events), stationary_categorical(fresh, events)
    binv, bin2 = stationary_binary(rng, events), stationary_binary(fresh, events)

    for kind, train, test in (("ks", num, num2), ("chi2", cat, cat2)):
        t0 = time.perf_counter()
        threshold = _max_statistic(kind, train, streams) * 1.1  # margin over the largest value under no change
        cls = WindowKS if kind == "ks" else WindowChi2
        fa = _alarms(lambda cls=cls, threshold=threshold: cls(threshold=threshold, **WINDOW), test, streams)
        out["detectors"][kind] = {
            "threshold": round(threshold, 6),
            "false_alarms": fa,
            "false_alarms_per_100k": fa / events * 1e5,
            "seconds": round(time.perf_counter() - t0, 1),
        }

    for kind, key, candidates, values, test, make in (
        (
            "adwin",
            "delta",
            [0.002, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
            num,
            num2,
            lambda v: RiverNumeric("adwin", {"delta": v}),
        ),
        (
            "ddm",
            "drift_threshold",
            [3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 8.0],
            binv,
            bin2,
            lambda v: RiverBinary({"drift_threshold": v, "warm_start": 100}),
        ),
    ):
        t0 = time.perf_counter()
        chosen = candidates[-1]
        for c in candidates:  # most sensitive first; half the budget as a margin for unseen streams
            if _alarms(lambda c=c, make=make: make(c), values, streams) <= allowed / 2:
                chosen = c
                break
        fa = _alarms(lambda: make(chosen), test, streams)
        out["detectors"][kind] = {
            key: chosen,
            "false_alarms": fa,
            "false_alarms_per_100k": fa / events * 1e5,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def load() -> dict[str, Any]:
    return json.loads(CALIBRATION_FILE.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--budget", type=float, default=1e-5)
    ap.add_argument("--out", type=Path, default=CALIBRATION_FILE)
    args = ap.parse_args(argv)
    result = calibrate(args.events, args.budget)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| detector | setting | false alarms (fresh stationary streams) | per 100k events |")
    print("|---|---|---|---|")
    for name, d in result["detectors"].items():
        setting = {k: v for k, v in d.items() if k in ("threshold", "delta", "drift_threshold")}
        print(f"| {name} | {setting} | {d['false_alarms']} in {args.events:,} | {d['false_alarms_per_100k']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
