"""The Ray Serve application.

- ``LLMServer``: one deployment per model version (``llm-<version>``). Loads its engine
  in ``__init__`` (verifying the artifact's digest), batches with ``@serve.batch``, keeps
  tunables in ``user_config`` (``reconfigure``: max tokens, batch size, system prompt)
  and raises from ``check_health`` when the engine is unusable.
- ``Router``: the ingress. Routes each request by weight with sticky assignment, mirrors
  it to shadow versions, and serves ``POST /v1/chat/completions`` (OpenAI-compatible)
  and ``GET /v1/models``. Its ``user_config`` is the routing table: redeploying with new
  weights calls ``reconfigure`` on the running replicas, so a rollback (weight 0) takes
  effect with no restart and no dropped request.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
import uuid
from typing import Any

from fastapi import Body, FastAPI, HTTPException
from ray import serve
from ray.serve.handle import DeploymentHandle

from services.inference.responses import chat_params
from services.inference.routing import NoServingVersion, RoutingTable, sticky_key
from services.inference.settings import InferenceSettings, ModelVersion


async def _awaited(resp: Any) -> Any:
    """A DeploymentResponse as a coroutine (for asyncio.wait_for)."""
    return await resp


class LLMServer:
    """One model version on one replica."""

    def __init__(self, model_name: str, version: dict[str, Any], engine: dict[str, Any]) -> None:
        from services.inference.engine import LlamaCppEngine

        self.model_name = model_name
        self.version = ModelVersion(**version)
        if engine["kind"] != "llama_cpp":
            raise ValueError("LLMServer runs the llama.cpp engine; GPU nodes use services.inference.gpu (Ray Serve LLM)")
        self.engine = LlamaCppEngine(
            model_path=self.version.model_path, sha256=self.version.sha256,
            n_ctx=engine["n_ctx"], n_threads=engine["n_threads"],
        )
        ctx = serve.get_replica_context()
        self.replica = f"{ctx.deployment}#{ctx.replica_id.unique_id}" if ctx else f"local#{uuid.uuid4().hex[:6]}"
        from services.inference.settings import EngineSettings

        defaults = EngineSettings()  # until reconfigure() delivers the user_config
        self.max_tokens = defaults.max_tokens
        self.system_prompt = defaults.system_prompt

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.max_tokens = int(config.get("max_tokens", self.max_tokens))
        self.system_prompt = config.get("system_prompt", self.system_prompt)
        if "max_batch_size" in config:
            self.generate.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self.generate.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    def check_health(self) -> None:
        if not self.engine.healthy():
            raise RuntimeError(f"{self.replica}: engine unusable (model file missing or repeated failures)")

    def info(self) -> dict[str, Any]:
        return {"version": self.version.version, "replica": self.replica, "digest": self.engine.digest,
                "model_file": self.engine.model_file, "max_tokens": self.max_tokens}

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005)
    async def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # llama.cpp's Python API generates one sequence at a time, so a batch is served in
        # order on one worker thread; batching still amortises the hop to that thread.
        return await asyncio.to_thread(lambda: [self._generate_one(r) for r in requests])

    def _generate_one(self, request: dict[str, Any]) -> dict[str, Any]:
        from services.inference.engine import GenerationParams, process_memory

        params = GenerationParams(**chat_params(request, self.max_tokens, self.system_prompt))
        try:
            gen = self.engine.generate(params)
        except (RuntimeError, ValueError) as exc:
            return {"error_type": type(exc).__name__, "error_message": str(exc), "version": self.version.version,
                    "replica": self.replica}
        rss, gpu = process_memory()
        return {
            **gen.to_dict(), "version": self.version.version, "replica": self.replica,
            "response_model": self.engine.model_file, "replica_cpu_memory_bytes": rss,
            "replica_gpu_memory_bytes": gpu,
        }


api = FastAPI(title="Argus inference", description="OpenAI-compatible chat completions over the Argus router")


@serve.ingress(api)
class Router:
    def __init__(self, model_name: str, versions: dict[str, DeploymentHandle]) -> None:
        self.model_name = model_name
        self.handles = versions
        self.table = RoutingTable.from_config({"weights": {v: 1.0 for v in versions}})
        self.reloads = 0

    def reconfigure(self, config: dict[str, Any]) -> None:
        table = RoutingTable.from_config(config)
        unknown = (set(table.weights) | set(table.shadows)) - set(self.handles)
        if unknown:
            raise ValueError(f"routing names versions that are not deployed: {sorted(unknown)}")
        self.table = table
        self.reloads += 1

    def routing(self) -> dict[str, Any]:
        return {"weights": self.table.weights, "shadows": list(self.table.shadows), "reloads": self.reloads}

    async def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one InferenceRequest (as a dict). Returns the primary answer and the
        shadow answers; errors come back as values, never as silence."""
        try:
            plan = self.table.plan(sticky_key(request))
        except NoServingVersion as exc:
            return {"primary": {"error_type": "NoServingVersion", "error_message": str(exc), "version": "none"},
                    "shadows": []}
        primary = self.handles[plan.primary].generate.remote(request)
        shadows = {v: self.handles[v].generate.remote(request) for v in plan.shadows}
        try:
            result = await primary
        except Exception as exc:  # a replica died or Serve refused: the caller gets an error response
            result = {"error_type": type(exc).__name__, "error_message": str(exc)[:2000], "version": plan.primary}
        shadow_results = []
        grace = self.table.shadow_grace_s
        for version, resp in shadows.items():
            started = time.monotonic()
            try:
                shadow_results.append(await asyncio.wait_for(_awaited(resp), timeout=grace))
            except asyncio.TimeoutError:
                resp.cancel()
                shadow_results.append({"error_type": "ShadowTimeout", "version": version,
                                       "error_message": f"shadow answer trailed the primary by more than {grace}s"})
            except Exception as exc:  # shadow failures are reported, never affect the primary
                shadow_results.append({"error_type": type(exc).__name__, "error_message": str(exc)[:2000],
                                       "version": version, "latency_ms": (time.monotonic() - started) * 1000})
        return {"primary": result, "shadows": shadow_results}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": self.model_name, "object": "model", "owned_by": "argus", "versions": sorted(self.handles)}
        ]}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: dict = Body(...)) -> dict[str, Any]:  # noqa: B008
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise HTTPException(status_code=400, detail="messages must be a non-empty list")
        if body.get("stream"):
            raise HTTPException(status_code=400, detail="stream=true is not supported on this route")
        request = {
            "request_id": str(uuid.uuid4()), "model": body.get("model") or self.model_name,
            "messages": body["messages"], "max_tokens": body.get("max_tokens"),
            "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "stop_sequences": [body["stop"]] if isinstance(body.get("stop"), str) else (body.get("stop") or []),
            "seed": body.get("seed"), "tenant": "http", "user": body.get("user"),
        }
        out = (await self.infer(request))["primary"]
        if "error_type" in out:
            raise HTTPException(status_code=503, detail=f"{out['error_type']}: {out.get('error_message')}")
        return {
            "id": "chatcmpl-" + request["request_id"], "object": "chat.completion", "created": int(time.time()),
            "model": request["model"], "system_fingerprint": out["version"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                         "finish_reason": out["finish_reason"]}],
            "usage": {"prompt_tokens": out["input_tokens"], "completion_tokens": out["output_tokens"],
                      "total_tokens": out["input_tokens"] + out["output_tokens"]},
            "argus": {"model_version": out["version"], "replica": out["replica"], "mean_logprob": out["mean_logprob"],
                      "time_to_first_token_ms": out["time_to_first_token_ms"], "latency_ms": out["latency_ms"]},
        }


def static_args(settings: InferenceSettings) -> dict[str, Any]:
    """What the application is built from: only what needs new replicas when it
    changes (which versions exist, their artifacts, the engine's load-time settings)."""
    e = settings.engine
    return {
        "model_name": settings.model_name,
        "versions": [v.model_dump(mode="json", include={"version", "model_path", "sha256"}) for v in settings.versions],
        "engine": e.model_dump(mode="json", exclude={"max_tokens", "max_batch_size", "batch_wait_timeout_s", "system_prompt"}),
        "router_max_ongoing_requests": max(64, settings.bridge.max_in_flight * 4),
    }


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Application builder for Serve's declarative config (``import_path``
    ``services.inference.app:app_builder``), as used by ``serve deploy`` and KubeRay."""
    engine = dict(args["engine"])
    handles = {}
    for artifact in args["versions"]:
        dep = serve.deployment(LLMServer).options(
            name=f"llm-{artifact['version']}",
            max_ongoing_requests=engine["max_ongoing_requests"],
            ray_actor_options={"num_cpus": engine["replica_num_cpus"], "num_gpus": engine["num_gpus"]},
            health_check_period_s=10,
        )
        handles[artifact["version"]] = dep.bind(args["model_name"], artifact, engine)
    router = serve.deployment(Router).options(
        name="router", num_replicas=1, max_ongoing_requests=args["router_max_ongoing_requests"],
        ray_actor_options={"num_cpus": 0},
    )
    return router.bind(args["model_name"], handles)


def serve_config(settings: InferenceSettings) -> dict[str, Any]:
    """The Serve application config (the ``applications[]`` entry of a ``serve deploy``
    file or a KubeRay RayService ``serveConfigV2``). Weights, shadows and engine
    tunables are per-deployment ``user_config``; changing only those reconfigures the
    running replicas in place: no restart, no dropped request."""
    engine_user_config = settings.engine_user_config()
    return {
        "name": settings.app_name,
        "route_prefix": settings.route_prefix,
        "import_path": "services.inference.app:app_builder",
        "args": static_args(settings),
        "deployments": [{"name": "router", "user_config": settings.routing_config()}] + [
            {
                "name": f"llm-{v.version}",
                "user_config": engine_user_config,
                "autoscaling_config": {"min_replicas": v.min_replicas, "max_replicas": v.max_replicas,
                                       "target_ongoing_requests": v.target_ongoing_requests},
            }
            for v in settings.versions
        ],
    }


def deploy(settings: InferenceSettings, timeout_s: float = 180.0) -> DeploymentHandle:
    """Apply :func:`serve_config` to the running Serve instance (what ``serve deploy``
    does through the dashboard's REST API) and wait until the application is running."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    client = _get_global_client()
    if settings.engine.kind == "vllm":
        from services.inference.gpu import gpu_serve_config

        config = gpu_serve_config(settings)
    else:
        config = serve_config(settings)
    apps = [ServeApplicationSchema(**config)]
    # keep the other applications of this Serve instance as they are
    for name, status in serve.status().applications.items():
        if name != settings.app_name and getattr(status, "deployed_app_config", None) is not None:
            apps.append(status.deployed_app_config)
    client.deploy_apps(ServeDeploySchema(applications=apps), _blocking=False)
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(settings.app_name)
        target = settings.routing_config()
        if app is not None and app.status == "RUNNING":
            handle = serve.get_app_handle(settings.app_name)
            # a blocking handle call must not run on a caller's event loop: use a thread
            with ThreadPoolExecutor(1) as pool:
                routing = pool.submit(lambda: handle.routing.remote().result()).result()
            if routing["weights"] == target["weights"] and routing["shadows"] == target["shadows"]:
                return handle
        if app is not None and app.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"{settings.app_name}: {app.status}: {app.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{settings.app_name} not running after {timeout_s:.0f}s: {app.status if app else 'absent'}")
        time.sleep(0.25)
