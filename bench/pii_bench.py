"""PII screen throughput on benign and adversarial text (issue 19).

- Benign: prompts of the kind the load generator sends (questions, some with an e-mail,
  a phone or a card), screened and scrubbed in full (`scrub`, redact mode); baseline:
  the superset screen alone (`maybe_pii`), what a clean text costs.
- Adversarial: 1 MB of each shape that made a backtracking detector quadratic
  (`a.` runs, `a@` runs, digits and separators, repeated PEM headers); the figure is
  the seconds to screen 1 MB, the baseline the seconds for 50 KB times 20 (what linear
  time predicts), measured in the same run.
- The e-mail pattern Argus used before issue 19, on 40 KB of `a.` (quadratic: 1.2 s on the
  machine the issue was measured on), against today's detectors on the same 40 KB.
"""

from __future__ import annotations

import random
import re
import time

from bench.common import Result

# the e-mail pattern before issue 19, kept here only as the baseline it is measured against
OLD_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")

SHAPES = {
    "a.": lambda n: "a." * (n // 2) + " x@y.com",
    "a@": lambda n: "a@" * (n // 2),
    "digits and separators": lambda n: "12-34." * (n // 6),
    "PEM headers": lambda n: "-----BEGIN RSA PRIVATE KEY-----" * (n // 31),
}


def _seconds(f, arg, repeat: int = 3) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        f(arg)
        best = min(best, time.perf_counter() - t)
    return best


def _benign(n: int) -> list[str]:
    rng = random.Random(5)
    topics = ["the capital of France", "my order status", "a refund", "the weather tomorrow", "a Python error"]
    extras = ["", "", "", " Reach me at jo.doe@example.com.", " Call +44 20 7946 0958.", " Card 4111 1111 1111 1111."]
    return [
        f"Hello, can you help me with {rng.choice(topics)}? I tried {rng.randint(1, 9)} times.{rng.choice(extras)}"
        for _ in range(n)
    ]


def run() -> list[Result]:
    from services.common.pii import PiiPolicy, find_pii, maybe_pii, scrub

    texts = _benign(20_000)
    size = sum(len(t) for t in texts) / 1e6
    policy = PiiPolicy()
    full = _seconds(lambda ts: [scrub(t, policy) for t in ts], texts, 2)
    screen = _seconds(lambda ts: [maybe_pii(t) for t in ts], texts, 2)
    results = [
        Result(
            "pii",
            f"benign prompts screened and scrubbed (20,000, {size:.1f} MB, a third with PII)",
            len(texts) / full,
            "the superset screen alone",
            len(texts) / screen,
            "texts/s",
            "(informational)",
        )
    ]
    for name, make in SHAPES.items():
        large, small = _seconds(find_pii, make(1_000_000), 2), _seconds(find_pii, make(50_000))
        results.append(
            Result(
                "pii",
                f"adversarial 1 MB of {name!r}: seconds to screen",
                large,
                "50 KB x 20 (linear)",
                small * 20,
                "s",
                "ratio <= 2 (linear); bounded by the 1 s budget in ingest",
                False,
            )
        )
    text = SHAPES["a."](40_000)
    results.append(
        Result(
            "pii",
            "40 KB of 'a.': today's detectors",
            _seconds(find_pii, text),
            "the e-mail pattern before issue 19 alone",
            _seconds(lambda t: sum(1 for _ in OLD_EMAIL.finditer(t)), text, 1),
            "s",
            "(the old one is quadratic)",
            False,
        )
    )
    return results
