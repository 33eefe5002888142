"""Prompt embeddings from the local engine (semantic drift; the injection rail): the same SmolLM2 GGUF
the inference service runs, loaded by llama.cpp in embedding mode (mean pooling, one
576-dimensional vector per prompt). No torch, no hub download.

Embedding is the expensive part (tens of prompts per second per core, in batches), so
the drift service embeds a rate-limited sample of prompts; the MMD test is a test on
samples, so a random subsample keeps it valid, only slower to fill its windows.

Example::

    >>> e = PromptEmbedder()                       # doctest: +SKIP
    >>> e.embed(["What is the capital of France?"]).shape
    (1, 576)
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


class PromptEmbedder:
    def __init__(self, model_path: Path | None = None, n_ctx: int = 512, threads: int = 1) -> None:
        try:
            from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama
        except ImportError as exc:  # the cpu extra is not installed
            raise RuntimeError(
                "prompt embeddings need llama-cpp-python (pip install -e '.[cpu]'), "
                "or turn off what needs them (ARGUS_DRIFT_SEMANTIC__ENABLED=false, the injection rail)"
            ) from exc
        from services.common.llm import packaged_model_path

        self.model_path = model_path or packaged_model_path()
        self._llm = Llama(
            model_path=str(self.model_path),
            embedding=True,
            pooling_type=LLAMA_POOLING_TYPE_MEAN,
            n_ctx=n_ctx,
            n_threads=threads,
            verbose=False,
        )
        self._lock = threading.Lock()  # a Llama object is not thread-safe
        self.max_chars = n_ctx * 3  # keep prompts inside the context (about 3+ chars per token)

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self._llm.embed([t[-self.max_chars :] or " " for t in texts])
        return np.asarray(vectors, dtype=np.float32)
