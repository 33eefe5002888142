"""GPU path: tokens/s of vLLM through Ray Serve LLM (the Argus GPU engine) against
standalone vLLM on the same model and prompts, in one run. Needs a GPU node with the GPU
image (``pip install 'ray[llm]==2.60.0'``); CI never runs it.

    python -m bench.inference_gpu --model /models/SmolLM2-135M-Instruct --requests 256

``--model`` is a local model directory (Argus serves only pinned local artifacts; both
sides load the same files, Argus a verified private copy of them).

Writes its rows to bench/RESULTS-gpu.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from bench.common import Result, machine

PROMPTS = [
    f"Explain {x} to a new engineer in three sentences."
    for x in (
        "Kafka consumer groups",
        "ClickHouse MergeTree",
        "Ray Serve autoscaling",
        "concept drift",
        "canary releases",
    )
]


def standalone(model: str, n: int, max_tokens: int) -> float:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, gpu_memory_utilization=0.45)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    msgs = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n)]
    llm.chat(msgs[:8], params)
    t = time.perf_counter()
    outs = llm.chat(msgs, params)
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    rate = tokens / (time.perf_counter() - t)
    del llm
    return rate


async def through_serve(model: str, n: int, max_tokens: int) -> float:
    from ray import serve

    from services.common.artifacts import artifact_digest
    from services.inference.app import deploy
    from services.inference.settings import EngineSettings, InferenceSettings, ModelVersion

    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    settings = InferenceSettings(
        versions=(ModelVersion(version="v1", model_path=model, sha256=artifact_digest(Path(model))),),
        engine=EngineSettings(kind="vllm", num_gpus=1, max_tokens=max_tokens, gpu_memory_utilization=0.45),
        allow_unsigned_models=True,  # a benchmark of the engine path, not of registration
    )
    router = deploy(settings, timeout_s=900)
    reqs = [
        {
            "request_id": f"r{i}",
            "model": settings.model_name,
            "tenant": "bench",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        }
        for i in range(n)
    ]
    await asyncio.gather(*(router.infer.remote(r) for r in reqs[:8]))
    t = time.perf_counter()
    outs = await asyncio.gather(*(router.infer.remote(r) for r in reqs))
    tokens = sum(o["primary"].get("output_tokens", 0) for o in outs)
    return tokens / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="A local model directory (config, tokenizer, safetensors).")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # a local cluster makes its own token
    base = standalone(args.model, args.requests, args.max_tokens)
    import ray

    ray.init(include_dashboard=False)
    ours = asyncio.run(through_serve(args.model, args.requests, args.max_tokens))
    r = Result(
        "inference-gpu",
        f"tokens/s, {args.requests} concurrent requests",
        ours,
        "standalone vLLM",
        base,
        "tok/s",
        "ratio >= 0.8",
    )
    out = Path(__file__).with_name("RESULTS-gpu.md")
    out.write_text(
        f"# GPU inference\n\nMachine: {machine()}.\n\n| figure | value | baseline | ratio |\n|---|---|---|---|\n"
        f"| {r.figure} | {r.value:,.0f} tok/s | {r.baseline:,.0f} tok/s ({r.baseline_name}) | {r.ratio:.2f} |\n"
    )
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
