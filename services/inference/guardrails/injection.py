"""The prompt-injection rail's guard: nearest-neighbour similarity of a prompt's
embedding to known attacks and to ordinary requests.

The embedding is SmolLM2's (the GGUF the platform already runs, mean-pooled by llama.cpp,
as the drift service embeds prompts). Embeddings of a small model share a large common
direction, so every vector is centred on the mean of the references before cosine
similarity. The score is ``max cos(prompt, attack) - max cos(prompt, benign)``: above
the threshold (0 by default: nearer an attack than any ordinary request) the prompt is
an injection attempt. The references are ``data/injection-references.yaml``; their
embeddings are computed when the guard loads (about 0.1 s each on one core).

One embedding costs ~0.1 s of a CPU core here, so the rail is off by default and, where
a tenant turns it on, runs under its time budget like every rail (fail-open or closed).
On GPU nodes a classifier served by Ray Serve takes its place behind the same interface
(docs/guardrails.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from services.inference.guardrails.offensive import GuardInfo

REFERENCES = Path(__file__).parent / "data" / "injection-references.yaml"
MAX_CHARS = 1536  # the embedder's context (512 tokens); longer prompts are embedded by their end


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)


class InjectionGuard:
    def __init__(self, embed: Callable[[list[str]], np.ndarray], model_digest: str, references: Path = REFERENCES):
        raw = references.read_bytes()
        refs: dict[str, Any] = yaml.safe_load(raw)
        attacks, benign = list(refs["attacks"]), list(refs["benign"])
        if not attacks or not benign or not all(isinstance(t, str) for t in attacks + benign):
            raise ValueError(f"{references}: needs attacks and benign references, each a string")
        self._embed = embed
        vectors = np.asarray(embed(attacks + benign), dtype=np.float64)
        self._mean = vectors.mean(axis=0)
        centred = _unit(vectors - self._mean)
        self._attacks, self._benign = centred[: len(attacks)], centred[len(attacks) :]
        digest = hashlib.sha256(raw + model_digest.encode()).hexdigest()
        self.info = GuardInfo(name="injection-similarity", version="smollm2-135m-mean-pool", digest="sha256:" + digest)

    @classmethod
    def from_packaged_model(cls) -> "InjectionGuard":
        from services.common.embeddings import PromptEmbedder
        from services.common.llm import sha256_of

        embedder = PromptEmbedder()
        return cls(embedder.embed, sha256_of(embedder.model_path))

    def score(self, text: str) -> float:
        v = _unit(np.asarray(self._embed([text[-MAX_CHARS:]]), dtype=np.float64)[0] - self._mean)
        return float(np.max(self._attacks @ v) - np.max(self._benign @ v))
