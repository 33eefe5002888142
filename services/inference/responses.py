"""Building InferenceResponse records (pure): one per request, errors included."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

# response ids are derived from the request id: an answer produced again for the same
# request (a bridge restarted before it committed the offset) is the same row to ClickHouse
_RESPONSE_IDS = uuid.UUID("1b7c2f3e-5a4d-4c6b-9e8f-7a6b5c4d3e2f")


def response_id(request_id: str, shadow_version: str | None = None) -> str:
    """The primary answer's id (``shadow_version`` None) or a shadow version's, from the
    request id.

    >>> response_id("5d2a3c4b-1e2f-4a5b-8c7d-9e0f1a2b3c4d") == response_id("5d2a3c4b-1e2f-4a5b-8c7d-9e0f1a2b3c4d")
    True
    """
    name = request_id if shadow_version is None else f"{request_id}|shadow|{shadow_version}"
    return str(uuid.uuid5(_RESPONSE_IDS, name))


def response_record(
    request: dict[str, Any],
    *,
    model_version: str,
    generation: dict[str, Any] | None = None,
    status: str = "ok",
    error_type: str | None = None,
    error_message: str | None = None,
    latency_ms: float | None = None,
    shadow: bool = False,
    guardrails: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The InferenceResponse for ``request``. ``generation`` is what an LLMServer replica
    returned (with the Router's guard-rail verdict); without it the response carries the
    error (and ``guardrails``, the verdict of the input rails that ran, if any)."""
    g = generation or {}
    verdict = g.get("guardrails") or guardrails
    return {
        "request_id": str(request["request_id"]),
        "response_id": response_id(str(request["request_id"]), model_version if shadow else None),
        "model": request["model"],
        "response_model": g.get("response_model") or request["model"],
        "model_version": model_version,
        "tenant": request["tenant"],
        "user": request.get("user"),
        "output": g.get("text") if generation else None,
        "finish_reason": g.get("finish_reason") if generation else "error",
        "input_tokens": int(g.get("input_tokens") or 0),
        "output_tokens": int(g.get("output_tokens") or 0),
        "latency_ms": float(g.get("latency_ms") if generation else (latency_ms or 0.0)),
        "time_to_first_token_ms": g.get("time_to_first_token_ms"),
        "mean_logprob": g.get("mean_logprob"),
        "status": status,
        "error_type": error_type,
        "error_message": (error_message or "")[:2000] or None,
        "replica": g.get("replica"),
        "replica_cpu_memory_bytes": g.get("replica_cpu_memory_bytes"),
        "replica_gpu_memory_bytes": g.get("replica_gpu_memory_bytes"),
        "replica_cpu_percent": g.get("replica_cpu_percent"),
        "replica_gpu_utilization": g.get("replica_gpu_utilization"),
        "shadow": shadow,
        "trace_id": request.get("trace_id"),
        "span_id": request.get("span_id"),
        "served_at": int(time.time() * 1000),
        "guard_action": verdict["action"] if verdict else None,
        "guard_verdict": json.dumps(verdict, separators=(",", ":")) if verdict else None,
        "cost": g.get("cost") if generation else None,
    }


def answer_record(request: dict[str, Any], out: dict[str, Any], shadow: bool = False) -> dict[str, Any]:
    """The InferenceResponse of what the Router answered (an answer or an error), for the
    bridge and the HTTP route alike."""
    if "error_type" in out:
        return response_record(
            request,
            model_version=out.get("version", "unknown"),
            status="error",
            error_type=out["error_type"],
            error_message=out.get("error_message"),
            latency_ms=out.get("latency_ms"),
            shadow=shadow,
            guardrails=out.get("guardrails"),
        )
    return response_record(request, model_version=out["version"], generation=out, shadow=shadow)


def chat_params(request: dict[str, Any], max_tokens_cap: int, system_prompt: str) -> dict[str, Any]:
    """Generation parameters for a request: the service caps max_tokens, and adds a
    system prompt when the caller sent none (a 135M model answers nonsense without)."""
    messages = [{"role": m["role"], "content": m["content"]} for m in request["messages"]]
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    requested = request.get("max_tokens")
    return {
        "messages": messages,
        "max_tokens": min(requested, max_tokens_cap) if requested else max_tokens_cap,
        "temperature": request.get("temperature") if request.get("temperature") is not None else 0.0,
        "top_p": request.get("top_p") if request.get("top_p") is not None else 1.0,
        "stop": list(request.get("stop_sequences") or []),
        "seed": request.get("seed"),
    }


def answer_cost(prices: dict[str, Any], model: str, answer: dict[str, Any]) -> float | None:
    """An answer's cost from the price table (``Price`` by ``"<model>@<version>"``, else by
    ``"<model>"``); ``None`` for an error or an unpriced model.

    >>> from services.inference.settings import Price
    >>> answer_cost({"m": Price(input_per_1k=1, output_per_1k=2)}, "m", {"version": "v1", "input_tokens": 500,
    ...             "output_tokens": 250})
    1.0
    """
    if "error_type" in answer:
        return None
    price = prices.get(f"{model}@{answer.get('version')}") or prices.get(model)
    if price is None:
        return None
    tokens_in, tokens_out = int(answer.get("input_tokens") or 0), int(answer.get("output_tokens") or 0)
    return round(price.cost(tokens_in, tokens_out, answer.get("latency_ms")), 10)
