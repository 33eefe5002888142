"""Guard rails: quality of each CPU guard on the labelled sets, and the time the rails
add (issue 20).

- Quality: precision and recall of the offensive-language guard (threshold 0.5) and the
  injection guard (threshold 0) on ``tests/data/guardrails/`` (100 positive and 100
  negative texts each, written for this purpose); the PII rail's quality is the PII
  benchmark's (``python -m bench.run pii``).
- Time: the output rails (deny patterns, PII, offensive language; default policy plus
  one deny pattern) on 16-token answers, p50 and p99 of ``GuardRails.check_output`` as
  the Router awaits it, against the same loop awaiting nothing (no rails), same run;
  and the injection rail's time per prompt (one embedding).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.common import Result, pct

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "guardrails"
ANSWERS = [
    "The capital of France is Paris, a city on the Seine known for its museums.",
    "You can reverse a list in Python with the reverse method or with slicing.",
    "Water boils at one hundred degrees Celsius at sea level, lower at altitude.",
    "Sure, here is a short poem about the sea and the wind over the waves.",
]


def lines(name: str) -> list[str]:
    return [t for t in (DATA / name).read_text().splitlines() if t.strip()]


def precision_recall(score, threshold: float, strict: bool, kind: str) -> tuple[float, float, int]:  # noqa: ANN001
    pos, neg = lines(f"{kind}-positive.txt"), lines(f"{kind}-negative.txt")
    hit = (lambda s: s > threshold) if strict else (lambda s: s >= threshold)
    tp = sum(hit(score(t)) for t in pos)
    fp = sum(hit(score(t)) for t in neg)
    return (tp / (tp + fp) if tp + fp else float("nan")), tp / len(pos), len(pos) + len(neg)


async def _latency(rails, policy, n: int = 2000) -> tuple[list[float], list[float]]:  # noqa: ANN001
    async def nothing() -> None:
        return None

    base, with_rails = [], []
    for i in range(n):
        text = ANSWERS[i % len(ANSWERS)]
        t = time.perf_counter()
        await nothing()
        base.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        await rails.check_output(text, policy)
        with_rails.append((time.perf_counter() - t) * 1000)
    return base, with_rails


def run() -> list[Result]:
    from services.inference.guardrails.injection import InjectionGuard
    from services.inference.guardrails.offensive import OffensiveLanguageGuard
    from services.inference.guardrails.policy import GuardrailSettings, RailPolicy
    from services.inference.guardrails.rails import GuardRails

    out: list[Result] = []
    offensive = OffensiveLanguageGuard()
    p, r, n = precision_recall(offensive.score, 0.5, False, "offensive")
    out.append(Result("guardrails", f"offensive-language guard: precision ({n} texts)", p, "target", 0.9, "", ">= 0.9"))
    out.append(Result("guardrails", f"offensive-language guard: recall ({n} texts)", r, "target", 0.8, "", ">= 0.8"))

    injection = InjectionGuard.from_packaged_model()
    p, r, n = precision_recall(injection.score, 0.0, True, "injection")
    out.append(Result("guardrails", f"injection guard: precision ({n} texts)", p, "target", 0.9, "", "(informational)"))
    out.append(Result("guardrails", f"injection guard: recall ({n} texts)", r, "target", 0.8, "", "(informational)"))
    prompts = lines("injection-positive.txt")[:20] + lines("injection-negative.txt")[:20]
    times = []
    for t in prompts:
        s = time.perf_counter()
        injection.score(t)
        times.append((time.perf_counter() - s) * 1000)

    rails = GuardRails(GuardrailSettings(default=RailPolicy(deny_patterns=(r"(?i)project\s+falcon",))))
    policy = rails.policy("bench")
    base, with_rails = asyncio.run(_latency(rails, policy))
    for q in (50, 99):
        out.append(
            Result(
                "guardrails",
                f"output rails added, p{q} (deny + PII + offensive, 16-token answers)",
                pct(with_rails, q / 100) - pct(base, q / 100),
                "no rails (the same await)",
                pct(base, q / 100),
                "ms",
                "p50 <= 5 ms" if q == 50 else "(informational)",
                higher_is_better=False,
            )
        )
    out.append(
        Result(
            "guardrails",
            "injection rail: one prompt embedded and scored, p50",
            pct(times, 0.5),
            "output rails p50",
            pct(with_rails, 0.5),
            "ms",
            "(informational: why the rail is off by default on CPU)",
            higher_is_better=False,
        )
    )
    return out
