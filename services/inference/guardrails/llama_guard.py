"""Llama Guard on GPU nodes: the output rail's classifier served by vLLM under Ray Serve,
behind the same rail as the CPU offensive-language guard.

With ``guard_model`` in the inference settings (vLLM engines only), the GPU application
(:func:`services.inference.gpu.gpu_app_builder`) adds:

- a Ray Serve LLM deployment of the guard model, loading a verified private copy of the
  pinned artifact, like the served versions (:func:`~services.inference.gpu.stage_artifact`);
- ``guard``: :class:`LlamaGuardAdapter`, which asks it to classify a conversation.

The Router then runs the ``output.offensive`` rail through this adapter
(:meth:`GuardRails.use_remote_guard <services.inference.guardrails.rails.GuardRails.use_remote_guard>`).
Policies, actions, the time budget and ``on_error`` are unchanged; the verdict names
``llama-guard``, the model id and the artifact's digest.

Llama Guard answers ``safe``, or ``unsafe`` and a line of hazard categories (``S1``–``S14``).
The score is the probability of ``unsafe`` as the first token, from the top log-probabilities
of that token, so the rail's threshold applies as it does on CPU. Where the log-probabilities
are missing, the score is 1.0 for ``unsafe`` and 0.0 for ``safe``.

Config-tested here (no GPU and no vLLM in CI); it has never run on a GPU
(docs/guardrails.md).
"""

from __future__ import annotations

import math
from typing import Any

GUARD_DEPLOYMENT = "guard"


def guard_verdict(text: str, first_top_logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Llama Guard's answer as (unsafe, categories, score).

    >>> guard_verdict("unsafe\\nS1,S10")["categories"]
    ['S1', 'S10']
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    unsafe = bool(lines) and lines[0].lower().startswith("unsafe")
    categories = [c.strip() for c in lines[1].split(",") if c.strip()] if unsafe and len(lines) > 1 else []
    score = 1.0 if unsafe else 0.0
    if first_top_logprobs:
        probs = {str(t.get("token", "")).strip().lower(): math.exp(float(t["logprob"])) for t in first_top_logprobs}
        p_unsafe, p_safe = probs.get("unsafe", 0.0), probs.get("safe", 0.0)
        if p_unsafe + p_safe > 0:
            score = p_unsafe / (p_unsafe + p_safe)
    return {"unsafe": unsafe, "categories": categories, "score": score}


class LlamaGuardAdapter:
    """``guard``: classifies (prompt, answer) with the guard model's Ray Serve LLM server."""

    def __init__(self, model_id: str, llm: Any, info: dict[str, str]) -> None:
        self.model_id = model_id
        self.llm = llm.options(stream=True)
        self.info = info

    async def describe(self) -> dict[str, str]:
        return dict(self.info)

    async def classify(self, prompt: str, answer: str) -> dict[str, Any]:
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        body = ChatCompletionRequest(
            model=self.model_id,
            # the model's chat template wraps the conversation in its moderation prompt
            messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            max_tokens=16,
            temperature=0.0,
            stream=True,
            logprobs=True,
            top_logprobs=5,
        )
        parts: list[str] = []
        first: list[dict[str, Any]] | None = None
        async for chunk in self.llm.chat.remote(body):
            data = chunk if isinstance(chunk, dict) else getattr(chunk, "model_dump", lambda: {})()
            for choice in data.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                for item in (choice.get("logprobs") or {}).get("content") or []:
                    if first is None:
                        first = list(item.get("top_logprobs") or [])
        return guard_verdict("".join(parts), first)
