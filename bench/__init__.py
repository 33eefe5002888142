"""Benchmarks: every figure is measured against a baseline in the same run and
reported as a ratio, never asserted in a timed test. ``python -m bench.run`` runs them
all and writes bench/RESULTS.md."""
