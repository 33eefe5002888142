"""Load generator: a realistic stream of inference requests with an optional drift
injected at a known time, so the drift, alerting and retraining paths can be tested
and demonstrated.

Prompt mixes are weighted topics of short English questions. A drift changes, from
``drift_at_s`` on, one property of the stream:

- ``length``: prompts become long (a paragraph of context before the question);
- ``language``: prompts switch to French, Spanish and German;
- ``topic``: the mix moves to another topic (legal questions instead of general ones).

Every request carries ``metadata.loadgen_phase`` (``baseline`` or ``drift``), so tests
and reports know the ground truth.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Callable, Literal

from services.sdk.producer import ArgusProducer

TOPICS: dict[str, list[str]] = {
    "general": [
        "What is the capital of {country}?",
        "Name a famous landmark in {country}.",
        "Give me one fact about {animal}s.",
        "What color is a {fruit}?",
        "How many legs does a {animal} have?",
        "Suggest a name for a pet {animal}.",
        "What is {a} plus {b}?",
        "Is a {fruit} sweet or sour?",
    ],
    "support": [
        "How do I reset my password?",
        "My order #{order} has not arrived. What can I do?",
        "Can I change the delivery address of order #{order}?",
        "How do I cancel my subscription?",
        "The app crashes when I open settings. Any idea?",
        "Where can I download my invoice for order #{order}?",
    ],
    "legal": [
        "Is a verbal contract binding in {country}?",
        "What does indemnification mean in a contract?",
        "Explain the difference between a warranty and a guarantee.",
        "Can my landlord in {country} raise rent mid-lease?",
        "What is a non-compete clause?",
        "How long is a copyright valid in {country}?",
    ],
}
FOREIGN = [
    "Quelle est la capitale de {country} ?",
    "Combien de pattes a un {animal} ?",
    "¿Cuál es la capital de {country}?",
    "¿De qué color es una {fruit}?",
    "Was ist die Hauptstadt von {country}?",
    "Wie viele Beine hat ein {animal}?",
]
CONTEXT = (
    "Here is some background for my question. I have been reading a lot about this subject over the last few "
    "weeks, comparing several sources, taking notes and discussing it with colleagues at work, and I still have "
    "doubts about some details that matter for a decision I need to make soon. "
)
FILL = {
    "country": ["France", "Japan", "Brazil", "Kenya", "Canada", "Italy", "India", "Norway"],
    "animal": ["cat", "dog", "spider", "horse", "bird", "ant"],
    "fruit": ["banana", "lemon", "cherry", "lime", "mango"],
}

DriftKind = Literal["none", "length", "language", "topic"]


@dataclass(frozen=True)
class LoadProfile:
    rate_per_s: float = 5.0
    duration_s: float = 60.0
    mix: tuple[tuple[str, float], ...] = (("general", 0.7), ("support", 0.3))
    tenants: tuple[str, ...] = ("acme", "globex", "initech")
    users_per_tenant: int = 50
    drift: DriftKind = "none"
    drift_at_s: float = 30.0
    max_tokens: int = 32
    deadline_s: float | None = 120.0
    seed: int = 7
    run_id: str = ""


def render(template: str, rng: random.Random) -> str:
    return template.format(
        country=rng.choice(FILL["country"]),
        animal=rng.choice(FILL["animal"]),
        fruit=rng.choice(FILL["fruit"]),
        a=rng.randint(1, 99),
        b=rng.randint(1, 99),
        order=rng.randint(10000, 99999),
    )


def make_prompt(profile: LoadProfile, rng: random.Random, drifted: bool) -> str:
    if drifted and profile.drift == "language":
        return render(rng.choice(FOREIGN), rng)
    if drifted and profile.drift == "topic":
        return render(rng.choice(TOPICS["legal"]), rng)
    names, weights = zip(*profile.mix)
    prompt = render(rng.choice(TOPICS[rng.choices(names, weights)[0]]), rng)
    if drifted and profile.drift == "length":
        prompt = CONTEXT * rng.randint(2, 4) + prompt
    return prompt


async def run_load(
    producer: ArgusProducer, profile: LoadProfile, on_sent: Callable[[int, str], None] | None = None
) -> dict[str, int]:
    """Send requests at ``rate_per_s`` for ``duration_s``; returns counts per phase."""
    rng = random.Random(profile.seed)
    total = int(profile.rate_per_s * profile.duration_s)
    started = time.monotonic()
    counts = {"baseline": 0, "drift": 0}
    for i in range(total):
        due = started + i / profile.rate_per_s
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        drifted = profile.drift != "none" and (i / profile.rate_per_s) >= profile.drift_at_s
        phase = "drift" if drifted else "baseline"
        tenant = rng.choice(profile.tenants)
        await producer.request(
            [{"role": "user", "content": make_prompt(profile, rng, drifted)}],
            tenant=tenant,
            user=f"{tenant}-u{rng.randrange(profile.users_per_tenant)}",
            max_tokens=profile.max_tokens,
            deadline_s=profile.deadline_s,
            metadata={"loadgen_phase": phase, "loadgen_seq": str(i), "loadgen_run": profile.run_id},
        )
        counts[phase] += 1
        if on_sent:
            on_sent(i + 1, phase)
    await producer.flush()
    return counts
