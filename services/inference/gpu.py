"""The GPU engine: vLLM through Ray Serve LLM (``ray.serve.llm``), with the same
request/response semantics as the llama.cpp engine.

Each model version becomes a Ray Serve LLM ``LLMServer`` (vLLM, continuous batching on
the GPU) built with ``build_llm_deployment`` from an ``LLMConfig``, fronted by a small
``VLLMAdapter`` deployment named ``llm-<version>`` that speaks what the Router and the
Kafka bridge expect (``generate(request) -> dict``: text, finish reason, token counts,
time to first token, latency, mean token logprob). The Router, weights, shadows and the
bridge are unchanged.

Every replica loads a verified private copy of the registered artifact, never a hub
model id (:func:`stage_artifact`, ``docs/governance.md``).

vLLM is installed only in the GPU image (``pip install 'ray[llm]==2.60.0'``), never in
CI: this module imports ``ray.serve.llm`` lazily, and its configuration builders are
plain dicts so they are tested without a GPU.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

from ray import serve

from services.inference.responses import chat_params
from services.inference.settings import InferenceSettings, ModelVersion


def llm_config(settings: InferenceSettings, version: ModelVersion, model: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``ray.serve.llm.LLMConfig`` for one version of ``model``
    (the settings' ``model_name`` by default)."""
    e = settings.engine
    if version.model_path is None:
        raise ValueError(f"version {version.version}: vLLM serves only a pinned local artifact (model_path)")
    cfg: dict[str, Any] = {
        "model_loading_config": {
            "model_id": f"{model or settings.model_name}-{version.version}",
            # the registered artifact; each replica loads a verified private copy of it (VerifiedLLMServer)
            "model_source": str(version.model_path),
        },
        "deployment_config": {
            "autoscaling_config": {
                "min_replicas": version.min_replicas,
                "max_replicas": version.max_replicas,
                "target_ongoing_requests": version.target_ongoing_requests,
            },
            "max_ongoing_requests": max(e.max_ongoing_requests, 32),  # vLLM batches continuously
        },
        "engine_kwargs": {
            "max_model_len": e.n_ctx,
            "tensor_parallel_size": e.tensor_parallel_size,
            "gpu_memory_utilization": e.gpu_memory_utilization,
            "max_logprobs": 1,  # the mean token logprob is the platform's confidence score
        },
        "runtime_env": {"env_vars": {"VLLM_USE_V1": "1"}},
    }
    if e.accelerator_type:
        cfg["accelerator_type"] = e.accelerator_type
    return cfg


class VLLMAdapter:
    """``llm-<version>``: the Router's contract over a Ray Serve LLM server."""

    def __init__(self, model_id: str, version: str, llm: Any, max_tokens: int, system_prompt: str) -> None:
        self.model_id = model_id
        self.version = version
        self.llm = llm.options(stream=True)
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        ctx = serve.get_replica_context()
        self.replica = f"{ctx.deployment}#{ctx.replica_id.unique_id}" if ctx else "local"

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.max_tokens = int(config.get("max_tokens", self.max_tokens))
        self.system_prompt = config.get("system_prompt", self.system_prompt)

    async def info(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "replica": self.replica,
            "model_id": self.model_id,
            "max_tokens": self.max_tokens,
        }

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """The whole answer (what the bridge and a non-streaming HTTP call get)."""
        result: dict[str, Any] = {}
        async for item in self.generate_stream(request):
            result = item.get("done", result)
        return result

    async def generate_stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The answer as it is generated: ``{"delta": text}`` items, then ``{"done": answer}``
        (the same answer :meth:`generate` returns), as :class:`~services.inference.app.LLMServer`."""
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        p = chat_params(request, self.max_tokens, self.system_prompt)
        body = ChatCompletionRequest(
            model=self.model_id,
            messages=p["messages"],
            max_tokens=p["max_tokens"],
            temperature=p["temperature"],
            top_p=p["top_p"],
            stop=p["stop"] or None,
            seed=p["seed"],
            stream=True,
            logprobs=True,
            stream_options={"include_usage": True},
        )
        started = time.perf_counter()
        first = None
        parts: list[str] = []
        logprobs: list[float] = []
        finish, usage = "length", {}
        try:
            async for chunk in self.llm.chat.remote(body):
                data = chunk if isinstance(chunk, dict) else getattr(chunk, "model_dump", lambda: {})()
                for choice in data.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        first = first or time.perf_counter()
                        parts.append(text)
                        yield {"delta": text}
                    for item in (choice.get("logprobs") or {}).get("content") or []:
                        logprobs.append(float(item["logprob"]))
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                if data.get("usage"):
                    usage = data["usage"]
        except Exception as exc:  # the adapter reports engine failures as values, like LLMServer
            yield {
                "done": {
                    "error_type": type(exc).__name__,
                    "error_message": str(exc)[:2000],
                    "version": self.version,
                    "replica": self.replica,
                }
            }
            return
        ended = time.perf_counter()
        from services.common.llm import replica_resources

        resources = replica_resources()
        yield {
            "done": {
                "text": "".join(parts),
                "finish_reason": finish,
                "input_tokens": int(usage.get("prompt_tokens", 0)),
                "output_tokens": int(usage.get("completion_tokens", len(logprobs))),
                "time_to_first_token_ms": (first - started) * 1000 if first else None,
                "latency_ms": (ended - started) * 1000,
                "mean_logprob": sum(logprobs) / len(logprobs) if logprobs else None,
                "version": self.version,
                "replica": self.replica,
                "response_model": self.model_id,
                **resources,
            }
        }


def stage_artifact(model_name: str, artifact: dict[str, Any], governance: dict[str, Any]) -> Any:
    """What a vLLM replica does before its engine starts: refuse an artifact no trusted
    pipeline key signed (unless unsigned models are allowed), then copy it into a private
    directory while hashing it, and refuse it unless the digest is the registered one.
    Returns the :class:`~services.common.artifacts.StagedArtifact` whose ``path`` vLLM
    loads (it is removed when the replica stops)."""
    from services.common.artifacts import StagedArtifact
    from services.inference.settings import ModelVersion
    from services.inference.verify import check_artifact_signature

    version = ModelVersion(**artifact)
    if version.model_path is None:
        raise ValueError(f"{model_name}/{version.version}: vLLM serves only a pinned local artifact (model_path)")
    check_artifact_signature(model_name, version, governance)
    return StagedArtifact(version.model_path, version.sha256)


def verified_llm_server() -> type:
    """Ray Serve LLM's ``LLMServer`` that loads only a verified copy of the registered
    artifact (:func:`stage_artifact`). Built on call: ``ray.serve.llm`` needs vLLM, which
    only the GPU image has."""
    import asyncio

    from ray.serve.llm.deployment import LLMServer

    class VerifiedLLMServer(LLMServer):
        async def __init__(
            self,
            llm_config: Any,
            *,
            argus_model: str,
            argus_artifact: dict[str, Any],
            argus_governance: dict[str, Any],
            **kwargs: Any,
        ) -> None:
            self.argus_artifact = await asyncio.to_thread(stage_artifact, argus_model, argus_artifact, argus_governance)
            loading = llm_config.model_loading_config.model_copy(update={"model_source": str(self.argus_artifact.path)})
            llm_config = llm_config.model_copy(update={"model_loading_config": loading})
            await super().__init__(llm_config, **kwargs)

        def __del__(self) -> None:  # Serve calls it when the replica stops: the private copy goes
            staged = getattr(self, "argus_artifact", None)
            if staged is not None:
                staged.close()

    return VerifiedLLMServer


def gpu_app_builder(args: dict[str, Any]) -> serve.Application:
    """The router's application on GPU nodes (``import_path:
    services.inference.gpu:gpu_app_builder``): the CPU builder's router, with the guard
    model (Llama Guard on vLLM) when ``args["guard"]`` names one."""
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from services.inference.router import Router

    guard = None
    if args.get("guard"):
        from services.inference.guardrails.llama_guard import GUARD_DEPLOYMENT, LlamaGuardAdapter

        g = args["guard"]
        guard_llm = build_llm_deployment(
            LLMConfig(**g["llm_config"]),
            name_prefix="vllm-guard-",
            deployment_cls=verified_llm_server(),
            bind_kwargs={
                "argus_model": g["llm_config"]["model_loading_config"]["model_id"],
                "argus_artifact": g["artifact"],
                "argus_governance": args.get("governance") or {},
            },
        )
        guard = (
            serve.deployment(LlamaGuardAdapter)
            .options(name=GUARD_DEPLOYMENT, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.1})
            .bind(g["llm_config"]["model_loading_config"]["model_id"], guard_llm, g["info"])
        )
    router = serve.deployment(Router).options(
        name="router", num_replicas=1, max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0}
    )
    return router.bind(args["model_name"], guard, args["guard"]["info"] if guard is not None else None)


def gpu_version_builder(args: dict[str, Any]) -> serve.Application:
    """One model version's application on GPU nodes (``services.inference.gpu:
    gpu_version_builder``): its vLLM server (Ray Serve LLM, from ``args["llm_config"]``,
    verifying the artifact) behind the Router's contract (:class:`VLLMAdapter`)."""
    from ray.serve.llm import LLMConfig, build_llm_deployment

    artifact, cfg, engine = args["artifact"], args["llm_config"], args["engine"]
    llm_app = build_llm_deployment(
        LLMConfig(**cfg),
        name_prefix=f"vllm-{artifact['version']}-",
        deployment_cls=verified_llm_server(),
        bind_kwargs={
            "argus_model": args["model_name"],
            "argus_artifact": artifact,
            "argus_governance": args.get("governance") or {},
        },
    )
    adapter = serve.deployment(VLLMAdapter).options(
        name=args["deployment"], max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.1}
    )
    return adapter.bind(
        cfg["model_loading_config"]["model_id"],
        artifact["version"],
        llm_app,
        engine.get("max_tokens", 256),
        engine.get("system_prompt", ""),
    )


def gpu_serve_applications(settings: InferenceSettings, trust_file: str | None = None) -> list[dict[str, Any]]:
    """The Serve applications for GPU nodes (for ``serve deploy`` / KubeRay): the CPU
    layout (:func:`~services.inference.serveconfig.serve_applications`: the router, one
    application per model version) with the vLLM builders, each version's
    ``LLMConfig`` and the guard model's."""
    from services.inference.serveconfig import governance_args, serve_applications

    router, *versions = serve_applications(settings, trust_file)
    router["import_path"] = "services.inference.gpu:gpu_app_builder"
    if settings.guard_model is not None:
        router["args"]["guard"] = guard_config(settings)
        router["args"]["governance"] = governance_args(settings, trust_file)  # the guard's artifact is checked too
    by_name = {
        settings.version_deployment(model, v.version)[0]: (model, v)
        for model, served in settings.served_versions().items()
        for v in served
    }
    for app in versions:
        model, v = by_name[app["name"]]
        app["import_path"] = "services.inference.gpu:gpu_version_builder"
        app["args"]["llm_config"] = llm_config(settings, v, model)
    return [router, *versions]


def guard_config(settings: InferenceSettings) -> dict[str, Any]:
    """The guard model's part of the GPU application: its artifact (verified by the
    replica as a version's is), its ``LLMConfig`` and what its verdicts name."""
    g = settings.guard_model
    assert g is not None
    return {
        "artifact": {
            "version": "guard",
            "model_path": str(g.model_path),
            "sha256": g.sha256,
            "card_sha256": g.card_sha256,
            "artifact_signature": g.artifact_signature,
        },
        "llm_config": {
            "model_loading_config": {"model_id": g.model_id, "model_source": str(g.model_path)},
            "deployment_config": {
                "autoscaling_config": {"min_replicas": g.min_replicas, "max_replicas": g.max_replicas},
                "max_ongoing_requests": 64,
            },
            "engine_kwargs": {
                "max_model_len": g.max_model_len,
                "gpu_memory_utilization": g.gpu_memory_utilization,
                "max_logprobs": 5,  # the first token's top log-probabilities give the score
            },
            "placement_group_config": {"bundles": [{"GPU": g.num_gpus}]},
            "runtime_env": {"env_vars": {"VLLM_USE_V1": "1"}},
        },
        "info": {"name": "llama-guard", "version": g.model_id, "digest": "sha256:" + g.sha256},
    }
