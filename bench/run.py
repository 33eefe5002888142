"""Run every benchmark and write bench/RESULTS.md (figure, baseline measured in the
same run, ratio, target) with the machine description.

    python -m bench.run                 # all
    python -m bench.run codec           # some: their rows are replaced, the others kept

Each benchmark's rows say which run produced them (a ``Produced by`` line per run).
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
    "bridge": "bench.bridge_overhead",
    "hops": "bench.hops",
    "ingest": "bench.ingest_bench",
    "drift": "bench.drift_bench",
    "drift-cases": "bench.drift_cases",
    "pii": "bench.pii_bench",
    "alerting": "bench.alerting_bench",
    "artifacts": "bench.artifact_bench",
    "failover": "bench.failover_bench",
    "guardrails": "bench.guardrails_bench",
    "fairness": "bench.fairness_bench",
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
    now = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    runs = [f"`python -m bench.run {' '.join(args.names)}` on {now}, machine: {machine()}"]
    rows = []
    if set(args.names) != set(BENCHMARKS) and RESULTS.exists():  # keep the other benchmarks' rows and their runs
        old = RESULTS.read_text().splitlines()
        kept = [
            line
            for line in old
            if line.startswith("| ")
            and not line.startswith(("| benchmark", "|---"))
            and line.split("|")[1].strip() not in args.names
        ]
        rows += kept
        kept_names = {line.split("|")[1].strip() for line in kept}
        for line in old:
            if line.startswith("- `python -m bench.run ") or line.startswith("Produced by `python -m bench.run "):
                text = line.split(" ", 1)[1] if line.startswith("- ") else line[len("Produced by ") :].rstrip(".")
                text = text.split(" (rows: ")[0]
                names = text.split("`")[1].split()[3:] or list(BENCHMARKS)
                still = [n for n in names if n in kept_names]
                if still:
                    if line.startswith("Produced by ") and "machine:" not in text:
                        machine_line = next((m for m in old if m.startswith("Machine: ")), "")
                        text += f", machine: {machine_line[len('Machine: ') :].rstrip('.')}" if machine_line else ""
                    if still != names:
                        text += f" (rows: {', '.join(still)})"
                    runs.insert(len(runs) - 1, text)
    for r in results:
        rows.append(
            f"| {r.benchmark} | {r.figure} | {fmt(r.value)} {r.unit} | {r.baseline_name} | {fmt(r.baseline)} {r.unit} "
            f"| {r.ratio:.2f} | {r.target} |"
        )
    order = list(BENCHMARKS)
    rows.sort(
        key=lambda line: order.index(line.split("|")[1].strip()) if line.split("|")[1].strip() in order else len(order)
    )
    lines = [
        "# Benchmark results",
        "",
        "Produced by:",
        "",
        *[f"- {r}" for r in runs],
        "",
        "Every figure is measured against its baseline in the same run; the ratio is figure / baseline.",
        "",
        "| benchmark | figure | value | baseline | baseline value | ratio | target |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
