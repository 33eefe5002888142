"""Prompt embeddings for semantic drift: the embedder is shared with the inference
service's injection rail (:mod:`services.common.embeddings`); the rate limiter and the
wire packing of vectors are drift's own."""

from __future__ import annotations

import base64
import time

import numpy as np

from services.common.embeddings import PromptEmbedder

__all__ = ["PromptEmbedder", "TokenBucket", "pack", "unpack"]


class TokenBucket:
    """At most ``rate`` per second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.t = time.monotonic()

    def take(self, n: int) -> int:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        granted = min(n, int(self.tokens))
        self.tokens -= granted
        return granted


def pack(vector: np.ndarray) -> str:
    """float16, base64: 1.5 KB per 576-dim vector on the internal topic."""
    return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode()


def unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float64)
