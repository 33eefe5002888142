"""Drift detection on streams nobody tuned it to, against river's defaults on identical
sequences (issue 16's acceptance).

Generators (not the ones the detectors were calibrated on: the calibration uses
lognormal and normal values and Bernoulli streams; these are gamma-distributed
latencies and Bernoulli label streams with changes):

- numeric: gamma(shape 4) latencies; abrupt mean shifts of 0.25, 0.5 and 1 standard
  deviation, and a ramp of 1 sd over 2,000 events; the change at event 6,000 of 16,000;
  a stationary control of 1,000,000 events (in streams of 50,000);
- label rates: base rates 1 %, 5 % and 30 % rising by half (x1.5), and a fall to half
  at 30 % (negative feedback is watched both ways); the change at event 6,000 (enough
  for about 60 positives at 1 %), the stream long enough after it for the change to be
  detectable; stationary controls at 0.5 %, 1 %, 5 %, 30 % and 50 %, 1,000,000 events
  each.

Methods, on the same sequences: Argus (the StreamMonitor as the service runs it: mean
CUSUM + windowed KS for a numeric feature, rate CUSUM two-sided for negative
feedback); river's ADWIN at its default delta (0.002); river's ADWIN at the delta that
keeps the same false-alarm budget on separate stationary streams ("calibrated ADWIN",
chosen here, in the same run, over every base rate); river's DDM at its defaults.

Reported per case: median delay (events after the change to the first alarm; a miss
counts as the rest of its stream, a lower bound; the mean is in the row's text: one miss
moves it by thousands of events), misses,
false alarms per 100k events (alarms before the change and on controls), events per
change (alarms after the change, per detector), median change-point error of the first
alarm (Argus: its located change point; ADWIN: detection minus its window width).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from bench.common import Result

REPS = 20
CONTROL_EVENTS, CONTROL_STREAM = 1_000_000, 50_000
BUDGET = 1e-5  # false alarms per event


# -- generators ----------------------------------------------------------------------------
def numeric_case(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, int]:
    n, change, shape, scale = 16_000, 6_000, 4.0, 50.0
    x = rng.gamma(shape, scale, n)
    sd = np.sqrt(shape) * scale
    if kind == "ramp":
        x[change:] += np.clip(np.arange(n - change) / 2000, 0, 1) * sd
    else:
        x[change:] += float(kind) * sd
    return x, change


def rate_case(rng: np.random.Generator, base: float, factor: float) -> tuple[np.ndarray, int]:
    change = max(6_000, int(60 / base))  # the reference needs ~50 positives before it pins
    n = change + int(max(8_000, 120 / (base * abs(factor - 1) ** 2 * 0.5)))
    x = np.concatenate([rng.random(change) < base, rng.random(n - change) < base * factor])
    return x, change


# -- methods -------------------------------------------------------------------------------
def argus(values: np.ndarray, kind: str) -> list[tuple[int, str, int]]:
    """(index, detector, located change point) of every started event: the StreamMonitor
    as the service runs it, on a numeric latency or a binary negative-feedback feature."""
    from services.drift.calibration import load
    from services.drift.features import Features
    from services.drift.monitor import StreamMonitor

    mon = StreamMonitor("m|v", load())
    out = []
    for v in values:
        f = (
            Features("m|v", numeric={"latency_ms": float(v)})
            if kind == "numeric"
            else Features("m|v", binary={"negative_feedback": bool(v)})
        )
        out += [(mon.position, a.detector, a.position) for a in mon.observe(f) if a.status == "started"]
    return out


def argus_numeric(values: np.ndarray) -> list[tuple[int, str, int]]:
    return argus(values, "numeric")


def argus_rate(values: np.ndarray) -> list[tuple[int, str, int]]:
    return argus(values, "binary")


def adwin(values: np.ndarray, delta: float = 0.002) -> list[tuple[int, str, int]]:
    from river import drift

    d = drift.ADWIN(delta=delta)
    out = []
    for i, v in enumerate(values, 1):
        d.update(float(v))
        if d.drift_detected:
            out.append((i, "adwin", i - int(d.width)))
    return out


def ddm(values: np.ndarray) -> list[tuple[int, str, int]]:
    from river.drift import binary

    d = binary.DDM()
    out = []
    for i, v in enumerate(values, 1):
        d.update(bool(v))
        if d.drift_detected:
            out.append((i, "ddm", i))
    return out


# -- scoring -------------------------------------------------------------------------------
def score(method: Callable, cases: Callable[[np.random.Generator], tuple[np.ndarray, int]], seed: int) -> dict:
    """A miss counts as a delay of the whole rest of its stream (a lower bound of the
    true delay), so a method that finds only its fastest few changes does not look fast."""
    rng = np.random.default_rng(seed)
    delays, cp_errors, per_change, missed, fa, events = [], [], [], 0, 0, 0
    for _ in range(REPS):
        values, change = cases(rng)
        alarms = method(values)
        events += change  # false alarms are counted on the pre-change part
        fa += sum(1 for i, _, _ in alarms if i <= change)
        after = [(i, det, cp) for i, det, cp in alarms if i > change]
        if not after:
            missed += 1
            delays.append(len(values) - change)
            continue
        i, _, cp = after[0]
        delays.append(i - change)
        cp_errors.append(abs(cp - (change + 1)))
        by_detector: dict[str, int] = {}
        for _, det, _ in after:
            by_detector[det] = by_detector.get(det, 0) + 1
        per_change.append(max(by_detector.values()))
    return {
        "delay": float(np.median(delays)) if delays else float("nan"),
        "mean_delay": float(np.mean(delays)) if delays else float("nan"),
        "missed": missed,
        "fa_per_100k": fa / events * 1e5,
        "max_events_per_change": max(per_change) if per_change else 0,
        "cp_error": float(np.median(cp_errors)) if cp_errors else float("nan"),
    }


def control(method: Callable, draw: Callable[[np.random.Generator, int], np.ndarray], seed: int) -> float:
    rng = np.random.default_rng(seed)
    alarms = sum(len(method(draw(rng, CONTROL_STREAM))) for _ in range(CONTROL_EVENTS // CONTROL_STREAM))
    return alarms / CONTROL_EVENTS * 1e5


def calibrated_adwin_delta(rates: tuple[float, ...], seed: int = 77) -> float:
    """The most sensitive ADWIN delta whose false alarms on separate stationary 0/1
    streams stay within half the budget at every base rate."""
    for delta in (0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
        rng = np.random.default_rng(seed)
        worst = 0
        for p in rates:
            worst = max(worst, sum(len(adwin(rng.random(CONTROL_STREAM) < p, delta)) for _ in range(10)))
        if worst <= BUDGET * 10 * CONTROL_STREAM / 2:
            return delta
    return 1e-8


def run() -> list[Result]:
    results: list[Result] = []
    t0 = time.perf_counter()

    # numeric shifts
    for kind in ("0.25", "0.5", "1", "ramp"):
        label = f"+{kind} sd shift" if kind != "ramp" else "ramp of 1 sd over 2,000 events"

        def cases(rng: np.random.Generator, kind: str = kind) -> tuple[np.ndarray, int]:
            return numeric_case(rng, kind)

        ours, base = score(argus_numeric, cases, 5), score(adwin, cases, 5)
        results.append(
            Result(
                "drift-cases",
                f"latency {label}: median delay, Argus (mean {ours['mean_delay']:.0f}, missed {ours['missed']}/{REPS}, "
                f"FA/100k {ours['fa_per_100k']:.1f}, "
                f"<= {ours['max_events_per_change']} event(s) per change and detector, change-point error "
                f"{ours['cp_error']:.0f})",
                ours["delay"],
                f"river ADWIN default (mean {base['mean_delay']:.0f}, missed {base['missed']}/{REPS}, "
                f"FA/100k {base['fa_per_100k']:.1f}, "
                f"<= {base['max_events_per_change']} per change, change-point error {base['cp_error']:.0f})",
                base["delay"],
                "events",
                "<= 1.2 for 0.25 sd; error <= 25% of delay",
                False,
            )
        )
    gamma = lambda rng, n: rng.gamma(4.0, 50.0, n)  # noqa: E731
    results.append(
        Result(
            "drift-cases",
            f"latency stationary control ({CONTROL_EVENTS:,} events): false alarms per 100k, Argus",
            control(lambda v: argus_numeric(v), gamma, 6),
            "river ADWIN default",
            control(adwin, gamma, 6),
            "FA/100k",
            "Argus <= 1",
            False,
        )
    )

    # label rates
    control_rates = (0.005, 0.01, 0.05, 0.3, 0.5)
    delta = calibrated_adwin_delta(control_rates)
    for p in control_rates:
        draw = lambda rng, n, p=p: rng.random(n) < p  # noqa: E731
        ours = control(argus_rate, draw, 8)
        results.append(
            Result(
                "drift-cases",
                f"negative feedback at {p:.1%}, stationary ({CONTROL_EVENTS:,} events): false alarms per 100k, Argus",
                ours,
                f"river ADWIN default {control(adwin, draw, 8):.1f}, DDM default {control(ddm, draw, 8):.1f}; "
                f"ADWIN at delta {delta:g}",
                control(lambda v: adwin(v, delta), draw, 8),
                "FA/100k",
                "Argus <= 1",
                False,
            )
        )
    for base_rate, factor in ((0.01, 1.5), (0.05, 1.5), (0.3, 1.5), (0.3, 0.5)):

        def cases(rng: np.random.Generator, p: float = base_rate, f: float = factor) -> tuple[np.ndarray, int]:
            return rate_case(rng, p, f)

        ours = score(argus_rate, cases, 9)
        default, tuned, d = score(adwin, cases, 9), score(lambda v: adwin(v, delta), cases, 9), score(ddm, cases, 9)
        what = f"negative feedback {base_rate:.0%} -> {base_rate * factor:.1%}"
        detail = (
            f"(mean {ours['mean_delay']:.0f}, missed {ours['missed']}/{REPS}, FA/100k {ours['fa_per_100k']:.1f}, "
            f"<= {ours['max_events_per_change']} "
            f"event(s) per change, change-point error {ours['cp_error']:.0f})"
        )
        results.append(
            Result(
                "drift-cases",
                f"{what}: median delay, Argus {detail}",
                ours["delay"],
                f"river ADWIN at delta {delta:g}, same budget (mean {tuned['mean_delay']:.0f}, missed "
                f"{tuned['missed']}/{REPS}, FA/100k {tuned['fa_per_100k']:.1f})",
                tuned["delay"],
                "events",
                "<= 1.0",
                False,
            )
        )
        results.append(
            Result(
                "drift-cases",
                f"{what}: median delay, Argus",
                ours["delay"],
                f"river ADWIN default (mean {default['mean_delay']:.0f}, missed {default['missed']}/{REPS}, FA/100k "
                f"{default['fa_per_100k']:.1f}); DDM default {d['delay']:.0f} (missed {d['missed']}/{REPS}, FA/100k "
                f"{d['fa_per_100k']:.1f})",
                default["delay"],
                "events",
                "<= 1.5",
                False,
            )
        )
    print(f"drift-cases: {time.perf_counter() - t0:.0f} s", flush=True)
    return results


def _main() -> None:  # a quick look without writing RESULTS.md
    for r in run():
        print(f"{r.figure}: {r.value:.1f} vs {r.baseline_name}: {r.baseline:.1f} ({r.ratio:.2f}, {r.target})")


if __name__ == "__main__":
    _main()
