"""Drift detection quality and speed on synthetic streams with known change points.

Streams (each 20 repetitions, change at event 5,000 of 10,000, stationary control
streams of the same length): abrupt mean shift, gradual mean shift (over 1,000 events),
variance change, categorical mix change. For each method: mean detection delay (events
after the change), missed detections, false alarms per 100k events (alarms before the
change and on the control streams).

Methods, on the same streams:
- Argus: the calibrated StreamMonitor (mean-shift CUSUM + windowed KS for numeric,
  windowed chi-squared for categorical);
- plain river ADWIN with its default delta (0.002), numeric streams only;
- a fixed-window batch test (what batch monitoring tools do): KS of each consecutive
  1,000-event batch against the first batch at p < 0.05, chi-squared for categorical.

Plus events/s per process for the non-embedding features (features + all detectors).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from scipy import stats as st

from bench.common import Result

N, CHANGE, REPS = 10_000, 5_000, 20


def streams(rng: np.random.Generator) -> dict[str, Callable[[], tuple[Any, bool]]]:
    def abrupt():  # noqa: ANN202
        return np.concatenate([rng.lognormal(3.5, 0.6, CHANGE), rng.lognormal(3.8, 0.6, N - CHANGE)]), True

    def gradual():  # noqa: ANN202
        ramp = np.clip((np.arange(N - CHANGE)) / 1000, 0, 1)
        return np.concatenate([rng.lognormal(3.5, 0.6, CHANGE), rng.lognormal(3.5 + 0.3 * ramp, 0.6)]), True

    def variance():  # noqa: ANN202
        return np.concatenate([rng.lognormal(3.5, 0.6, CHANGE), rng.lognormal(3.5, 1.0, N - CHANGE)]), True

    def categorical():  # noqa: ANN202
        cats = np.array(["en", "fr", "es", "de", "other"])
        a = cats[rng.choice(5, CHANGE, p=[0.7, 0.1, 0.1, 0.05, 0.05])]
        b = cats[rng.choice(5, N - CHANGE, p=[0.55, 0.2, 0.15, 0.05, 0.05])]
        return np.concatenate([a, b]), True

    def control_numeric():  # noqa: ANN202
        return rng.lognormal(3.5, 0.6, N), False

    def control_categorical():  # noqa: ANN202
        cats = np.array(["en", "fr", "es", "de", "other"])
        return cats[rng.choice(5, N, p=[0.7, 0.1, 0.1, 0.05, 0.05])], False

    return {
        "abrupt mean": abrupt,
        "gradual mean": gradual,
        "variance": variance,
        "categorical mix": categorical,
        "control numeric": control_numeric,
        "control categorical": control_categorical,
    }


def argus(values: Any, categorical: bool) -> list[int]:
    from services.drift.calibration import load
    from services.drift.features import Features
    from services.drift.monitor import StreamMonitor

    mon = StreamMonitor("m|v", load())
    out = []
    for v in values:
        f = Features("m|v", categorical={"x": str(v)}) if categorical else Features("m|v", numeric={"x": float(v)})
        if any(a.status == "started" for a in mon.observe(f)):
            out.append(mon.position)
    return out


def adwin_only(values: Any, categorical: bool, delta: float = 0.002) -> list[int] | None:
    """river ADWIN alone (default delta 0.002 unless given), numeric streams only."""
    if categorical:
        return None
    from river import drift

    d = drift.ADWIN(delta=delta)
    out = []
    for i, v in enumerate(values, 1):
        d.update(float(v))
        if d.drift_detected:
            out.append(i)
    return out


def plain_adwin(values: Any, categorical: bool) -> list[int] | None:
    return adwin_only(values, categorical)


def batch_test(values: Any, categorical: bool, size: int = 1000) -> list[int]:
    ref = values[:size]
    out = []
    for start in range(size, len(values) - size + 1, size):
        cur = values[start : start + size]
        if categorical:
            cats = sorted(set(ref) | set(cur))
            table = np.array([[np.sum(ref == c) for c in cats], [np.sum(cur == c) for c in cats]]) + 0.5
            p = st.chi2_contingency(table)[1]
        else:
            p = st.ks_2samp(ref, cur).pvalue
        if p < 0.05:
            out.append(start + size)
    return out


def evaluate(method: Callable, rng_seed: int = 3) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(rng_seed)
    gens = streams(rng)
    res: dict[str, dict[str, float]] = {}
    for name, gen in gens.items():
        delays, missed, false_alarms, events = [], 0, 0, 0
        skipped = False
        for _ in range(REPS):
            values, has_change = gen()
            alarms = method(values, name.startswith("categorical") or name == "control categorical")
            if alarms is None:
                skipped = True
                break
            events += len(values)
            if has_change:
                false_alarms += sum(1 for a in alarms if a <= CHANGE)
                after = [a for a in alarms if a > CHANGE]
                if after:
                    delays.append(after[0] - CHANGE)
                else:
                    missed += 1
            else:
                false_alarms += len(alarms)
        if skipped:
            continue
        res[name] = {
            "delay": float(np.mean(delays)) if delays else float("nan"),
            "missed": missed,
            "fa_per_100k": false_alarms / events * 1e5,
        }
    return res


N_E, CHANGE_E, REPS_E = 3_000, 1_500, 10


def embedding_streams(rng: np.random.Generator) -> dict[str, Callable[[], tuple[Any, bool]]]:
    """Synthetic prompt embeddings (576-d, anisotropic like small-LM embeddings): a
    mixture of topic clusters; the change brings in a cluster the reference never had."""
    centers = rng.normal(0, 1, (5, 576)) * 0.3
    common = rng.normal(0, 1, 576) * 3

    def draw(n: int, mix: list[float]) -> np.ndarray:
        return common + centers[rng.choice(5, n, p=mix)] + rng.normal(0, 0.2, (n, 576))

    base, shifted = [0.4, 0.3, 0.3, 0, 0], [0.3, 0.2, 0.2, 0.3, 0]

    def cluster():  # noqa: ANN202
        return np.vstack([draw(CHANGE_E, base), draw(N_E - CHANGE_E, shifted)]), True

    def control():  # noqa: ANN202
        return draw(N_E, base), False

    return {"embedding cluster": cluster, "control embedding": control}


def mmd_argus(values: np.ndarray) -> list[int]:
    """Argus' semantic detectors as the service runs them: MMD on the embeddings plus
    the mean CUSUM and KS on the distance to the reference centroid (calibrated settings)."""
    from services.drift.calibration import load
    from services.drift.monitor import StreamMonitor
    from services.drift.settings import SemanticSettings

    mon, s = StreamMonitor("m|*", load()), SemanticSettings()
    return [
        i
        for i, v in enumerate(values, 1)
        if any(a.status == "started" for a in mon.observe_embedding(v, "", s, position=i))
    ]


def adwin_on_distance(values: np.ndarray, reference: int = 200) -> list[int]:
    """What river alone offers for vectors: ADWIN on one number per event, the distance
    to the centroid of the first ``reference`` embeddings."""
    from river import drift

    centroid = values[:reference].mean(axis=0)
    d = drift.ADWIN()
    out = []
    for i, v in enumerate(values, 1):
        d.update(float(np.linalg.norm(v - centroid)))
        if d.drift_detected:
            out.append(i)
    return out


def batch_mmd(values: np.ndarray, size: int = 500, permutations: int = 200) -> list[int]:
    """A fixed-window batch test: each 500-embedding batch against the first, MMD with a
    permutation p-value < 0.05."""
    from services.drift.detectors import mmd_permutation_test

    rng = np.random.default_rng(0)
    ref = values[:size]
    sigma = float(np.median(np.linalg.norm(ref[:, None, :] - ref[None, :, :], axis=-1))) or 1.0
    out = []
    for start in range(size, len(values) - size + 1, size):
        if mmd_permutation_test(ref, values[start : start + size], sigma, permutations, rng)[1] < 0.05:
            out.append(start + size)
    return out


def evaluate_embeddings(method: Callable, seed: int = 4) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    res: dict[str, dict[str, float]] = {}
    for name, gen in embedding_streams(rng).items():
        delays, missed, fa, events = [], 0, 0, 0
        for _ in range(REPS_E):
            values, has_change = gen()
            alarms = method(values)
            events += len(values)
            fa += sum(1 for a in alarms if a <= CHANGE_E) if has_change else len(alarms)
            after = [a for a in alarms if a > CHANGE_E]
            if has_change:
                if after:
                    delays.append(after[0] - CHANGE_E)
                else:
                    missed += 1
        res[name] = {
            "delay": float(np.mean(delays)) if delays else float("nan"),
            "missed": missed,
            "fa_per_100k": fa / events * 1e5,
            "events": events,
        }
    return res


def throughput(n: int = 50_000) -> float:
    from services.drift.calibration import load
    from services.drift.features import request_features, response_features
    from services.drift.monitor import StreamMonitor

    rng = np.random.default_rng(9)
    reqs = [
        {
            "request_id": str(i),
            "model": "m",
            "tenant": f"t{i % 3}",
            "messages": [{"role": "user", "content": "What is the capital of France? " * int(rng.integers(1, 4))}],
        }
        for i in range(n // 2)
    ]
    resps = [
        {
            "request_id": str(i),
            "model": "m",
            "model_version": "v1",
            "output": "Paris.",
            "status": "ok",
            "finish_reason": "stop",
            "output_tokens": int(rng.integers(2, 30)),
            "latency_ms": float(rng.lognormal(5, 0.3)),
            "time_to_first_token_ms": 40.0,
            "mean_logprob": float(-rng.random()),
            "shadow": False,
        }
        for i in range(n // 2)
    ]
    mons: dict[str, StreamMonitor] = {}
    cal = load()
    t = time.perf_counter()
    for q, r in zip(reqs, resps):
        for f in (request_features(q), response_features(r)):
            mons.setdefault(f.stream, StreamMonitor(f.stream, cal)).observe(f)
    return n / (time.perf_counter() - t)


def run() -> list[Result]:
    ours, adwin, batch = evaluate(argus), evaluate(plain_adwin), evaluate(batch_test)
    results: list[Result] = []
    for name in ("abrupt mean", "gradual mean", "variance"):
        results.append(
            Result(
                "drift",
                f"{name}: detection delay, Argus (missed {ours[name]['missed']}/{REPS}, "
                f"FA/100k {ours[name]['fa_per_100k']:.1f})",
                ours[name]["delay"],
                f"plain ADWIN (missed {adwin[name]['missed']}/{REPS}, FA/100k {adwin[name]['fa_per_100k']:.1f})",
                adwin[name]["delay"],
                "events",
                "(default delta, over the FA budget)",
                False,
            )
        )
        results.append(
            Result(
                "drift",
                f"{name}: detection delay, Argus",
                ours[name]["delay"],
                f"batch KS, 1000-event windows (missed {batch[name]['missed']}/{REPS}, FA/100k "
                f"{batch[name]['fa_per_100k']:.1f})",
                batch[name]["delay"],
                "events",
                "(informational)",
                False,
            )
        )
    name = "categorical mix"
    results.append(
        Result(
            "drift",
            f"{name}: detection delay, Argus chi2 (missed {ours[name]['missed']}/{REPS}, FA/100k "
            f"{ours[name]['fa_per_100k']:.1f})",
            ours[name]["delay"],
            f"batch chi2, 1000-event windows (missed {batch[name]['missed']}/{REPS}, FA/100k "
            f"{batch[name]['fa_per_100k']:.1f})",
            batch[name]["delay"],
            "events",
            "(informational)",
            False,
        )
    )
    for name in ("control numeric", "control categorical"):
        base = adwin.get(name, batch[name])
        results.append(
            Result(
                "drift",
                f"{name}: false alarms per 100k events, Argus",
                ours[name]["fa_per_100k"],
                "plain ADWIN" if name in adwin else "batch chi2",
                base["fa_per_100k"],
                "FA/100k",
                "Argus <= 1",
                False,
            )
        )
    e_ours, e_adwin, e_batch = (evaluate_embeddings(m) for m in (mmd_argus, adwin_on_distance, batch_mmd))
    name = "embedding cluster"
    for label, base in (
        ("river ADWIN on distance to the reference centroid", e_adwin),
        ("batch MMD, 500-embedding windows", e_batch),
    ):
        results.append(
            Result(
                "drift",
                f"{name}: detection delay, Argus MMD + distance (missed {e_ours[name]['missed']}/{REPS_E}, FA/100k "
                f"{e_ours[name]['fa_per_100k']:.1f})",
                e_ours[name]["delay"],
                f"{label} (missed {base[name]['missed']}/{REPS_E}, FA/100k {base[name]['fa_per_100k']:.1f})",
                base[name]["delay"],
                "embeddings",
                "(informational)",
                False,
            )
        )
    name = "control embedding"
    results.append(
        Result(
            "drift",
            f"{name}: false alarms per 100k embeddings, Argus MMD + distance ({e_ours[name]['events']:,} "
            "stationary embeddings)",
            e_ours[name]["fa_per_100k"],
            "batch MMD, 500-embedding windows",
            e_batch[name]["fa_per_100k"],
            "FA/100k",
            "Argus <= 1 (bound: alpha x tests)",
            False,
        )
    )
    results.append(
        Result(
            "drift",
            "events/s per process (request + response features, all detectors)",
            throughput(),
            "target",
            50_000,
            "events/s",
            ">= 50k/s",
        )
    )
    return results
