"""Fairness monitor (issue 20): how soon an injected disparity is found, and how often a
fair stream raises anything.

- Disparity: 10 segments (locales) uniformly, 2% of answers refused; from request 10,000
  one locale's requests are refused at 3x (6%). Detection delay = requests after the
  onset until the ``started`` event for that locale's refusals, over ``RUNS`` seeds;
  also counted: runs that missed it and episodes opened for anything else.
- Control: the same load without the disparity, 50,000 requests per run, ``RUNS`` seeds:
  runs with any event (the acceptance: none), against the bound the test's design gives
  (fdr x evaluations per run).
- Cost: answers per second through ``FairnessMonitor.observe`` (one core), against the
  drift service's per-process throughput target.
"""

from __future__ import annotations

import random
import statistics
import time

from bench.common import Result

RUNS = 30


def _answer(rng: random.Random, refused: float) -> dict:
    return {
        "refused": float(rng.random() < refused),
        "harmful": float(rng.random() < 0.01),
        "error": float(rng.random() < 0.005),
        "deadline_missed": 0.0,
        "output_tokens": float(rng.randint(5, 30)),
        "latency_ms": rng.gauss(400, 60),
        "confidence": rng.gauss(-1.2, 0.3),
    }


def _run(seed: int, n: int, onset: int | None) -> list[tuple[int, dict]]:
    from services.drift.fairness import FairnessConfig, FairnessMonitor

    rng = random.Random(seed)
    mon = FairnessMonitor("m", FairnessConfig(dimensions=("locale",)))
    events = []
    for i in range(n):
        loc = f"l{rng.randrange(10)}"
        rate = 0.06 if onset is not None and i >= onset and loc == "l3" else 0.02
        events += [(i, e) for e in mon.observe({"locale": loc}, _answer(rng, rate), now_ms=i)]
    return events


def run() -> list[Result]:
    from services.drift.fairness import FairnessConfig

    cfg = FairnessConfig()
    delays, missed, extra = [], 0, 0
    for seed in range(RUNS):
        started = [(i, e) for i, e in _run(10_000 + seed, 30_000, 10_000) if e["status"] == "started"]
        hits = [i for i, e in started if e["feature"] == "fairness.refused[locale=l3]" and i >= 10_000]
        extra += len(started) - (1 if hits else 0)
        if hits:
            delays.append(hits[0] - 10_000)
        else:
            missed += 1
    quiet_runs, t0, answers = 0, time.perf_counter(), 0
    for seed in range(RUNS):
        quiet_runs += not _run(20_000 + seed, 50_000, None)
        answers += 50_000
    rate = answers / (time.perf_counter() - t0)
    delays.sort()
    p90 = delays[int(0.9 * (len(delays) - 1))] if delays else float("nan")
    bound = cfg.fdr * 50_000 / cfg.evaluate_every
    return [
        Result(
            "fairness",
            f"3x refusals in 1 of 10 segments (2% base): median detection delay, requests "
            f"(p90 {p90:,}, missed {missed}/{RUNS}, other episodes {extra})",
            statistics.median(delays) if delays else float("nan"),
            "the window",
            float(cfg.window),
            "requests",
            "documented (docs/fairness.md); missed 0, other episodes 0",
            higher_is_better=False,
        ),
        Result(
            "fairness",
            f"fair load, 50,000 requests x {RUNS} runs, 10 segments: runs with any event",
            float(RUNS - quiet_runs),
            "design bound per run (fdr x evaluations)",
            bound,
            "runs",
            "0 (acceptance: none over 50,000 requests)",
            higher_is_better=False,
        ),
        Result(
            "fairness",
            "answers/s through the monitor (one core, 7 outcomes, 10 segments)",
            rate,
            "drift service target per process",
            50_000.0,
            "answers/s",
            "(informational)",
        ),
    ]
