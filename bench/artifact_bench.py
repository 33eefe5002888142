"""What verifying an artifact where it is loaded costs: the llama.cpp path hashes the
GGUF while copying it into sealed memory (VerifiedArtifact), the vLLM path hashes a model
directory while copying it into a private directory (StagedArtifact); each against only
hashing the same bytes (what a check-then-load without the copy would cost), in one run.
A replica pays it once, at start."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.common import Result, median


def _timed(fn, repeat: int = 3) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def run(mb: int = 256) -> list[Result]:
    from services.common.artifacts import StagedArtifact, artifact_digest
    from services.common.llm import VerifiedArtifact, packaged_model_path, sha256_of

    gguf = packaged_model_path()
    size = gguf.stat().st_size / 1e6
    digest = sha256_of(gguf)

    def memfd() -> None:
        with VerifiedArtifact(gguf, digest):
            pass

    sealed, hashed = _timed(memfd), _timed(lambda: sha256_of(gguf))
    out = [
        Result(
            "artifacts",
            f"GGUF ({size:.0f} MB) hashed into sealed memory",
            size / sealed,
            "hash only",
            size / hashed,
            "MB/s",
            "ratio >= 0.4 (one more pass over the bytes, once per replica start)",
        )
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        (model / "tokenizer").mkdir(parents=True)
        (model / "config.json").write_text('{"model_type": "llama"}')
        (model / "tokenizer" / "tokenizer.json").write_text("{}" * 1000)
        with open(model / "model.safetensors", "wb") as f:
            for _ in range(mb):
                f.write(os.urandom(1 << 20))
        expected = artifact_digest(model)

        def staged() -> None:
            with StagedArtifact(model, expected, parent=Path(tmp)):
                pass

        copy, plain = _timed(staged), _timed(lambda: artifact_digest(model))
    out.append(
        Result(
            "artifacts",
            f"model directory ({mb} MB) staged for vLLM",
            mb / copy,
            "hash only",
            mb / plain,
            "MB/s",
            "ratio >= 0.4 (one more pass over the bytes, once per replica start)",
        )
    )
    return out
