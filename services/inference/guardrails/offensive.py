"""The offensive-language guard: the linear model of ``alt-profanity-check``, run from
plain arrays (see :mod:`services.inference.guardrails.export`).

``score(text)`` is the package's ``predict_prob``: a TF-IDF vector of the lower-cased
word unigrams (``(?u)\\b\\w\\w+\\b``, l2-normalised), through five linear SVMs each
calibrated with a sigmoid, averaged. Computed here over the handful of words an answer
has (a sparse dot product), it costs tens of microseconds instead of the package's
~8 ms per call through scikit-learn, and loads no pickle.

Example::

    >>> g = OffensiveLanguageGuard()
    >>> g.score("The capital of France is Paris.") < 0.5
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_FILE = Path(__file__).parent / "data" / "offensive-linear.npz"
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
# sentences (and lines) for span-level redaction
_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n|$)")
MAX_CHARS = 65536  # longer texts are scored on their first 64 KiB (answers are far shorter)


@dataclass(frozen=True)
class GuardInfo:
    """What every verdict names: the guard, its version and the digest of its artifact."""

    name: str
    version: str
    digest: str


class OffensiveLanguageGuard:
    def __init__(self, path: Path = MODEL_FILE) -> None:
        raw = path.read_bytes()
        with np.load(path, allow_pickle=False) as z:
            vocab = [str(w) for w in z["vocabulary"]]
            idf = z["idf"]
            self._coef = np.ascontiguousarray(z["coef"].T)  # (vocabulary, classifiers)
            self._intercept = z["intercept"]
            self._a, self._b = z["sigmoid_a"], z["sigmoid_b"]
            meta = json.loads(str(z["meta"]))
        self._index = {w: i for i, w in enumerate(vocab)}
        self._idf = idf
        source = meta["source"]
        self.info = GuardInfo(
            name="offensive-language", version=source, digest="sha256:" + hashlib.sha256(raw).hexdigest()
        )

    def score(self, text: str) -> float:
        """The probability that ``text`` is offensive (the package's ``predict_prob``)."""
        counts: dict[int, int] = {}
        index = self._index
        for tok in _TOKEN.findall(text[:MAX_CHARS].lower()):
            i = index.get(tok)
            if i is not None:
                counts[i] = counts.get(i, 0) + 1
        if counts:
            ids = np.fromiter(counts, dtype=np.intp, count=len(counts))
            x = np.fromiter(counts.values(), dtype=np.float64, count=len(counts)) * self._idf[ids]
            x /= math.sqrt(float(x @ x))
            decision = x @ self._coef[ids] + self._intercept
        else:
            decision = self._intercept
        # sklearn's _SigmoidCalibration: P(offensive) = expit(-(a * decision + b))
        return float(np.mean(1.0 / (1.0 + np.exp(self._a * decision + self._b))))

    def offending_spans(self, text: str, threshold: float) -> list[tuple[int, int]]:
        """The sentences (or lines) of ``text`` scoring at or above ``threshold``; the whole
        text when it does but no sentence alone does."""
        spans = [
            (m.start(), m.end())
            for m in _SENTENCE.finditer(text[:MAX_CHARS])
            if m.end() > m.start()
            and text[m.start() : m.end()].strip()
            and self.score(text[m.start() : m.end()]) >= threshold
        ]
        if not spans and self.score(text) >= threshold:
            return [(0, len(text))]
        return spans
