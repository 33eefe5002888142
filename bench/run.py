"""Run every benchmark and write bench/RESULTS.md (figure, baseline measured in the
same run, ratio, target) with the machine description.

    python -m bench.run                 # all
    python -m bench.run codec           # some
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import math
import sys
from pathlib import Path

from bench.common import Result, machine

BENCHMARKS = {
    "codec": "bench.codec_bench",
    "inference": "bench.inference_overhead",
    "ingest": "bench.ingest_bench",
    "drift": "bench.drift_bench",
    "alerting": "bench.alerting_bench",
}
RESULTS = Path(__file__).with_name("RESULTS.md")


def fmt(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=list(BENCHMARKS))
    args = ap.parse_args(argv)
    results: list[Result] = []
    for name in args.names:
        print(f"running {name}...", flush=True)
        results.extend(importlib.import_module(BENCHMARKS[name]).run())
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `python -m bench.run {' '.join(args.names)}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}.",
        "Every figure is measured against its baseline in the same run; the ratio is figure / baseline.",
        "",
        "| benchmark | figure | value | baseline | baseline value | ratio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.benchmark} | {r.figure} | {fmt(r.value)} {r.unit} | {r.baseline_name} | {fmt(r.baseline)} {r.unit} "
                     f"| {r.ratio:.2f} | {r.target} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
