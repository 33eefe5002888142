"""The Ray Serve application.

- ``LLMServer``: one deployment per model version (``llm-<version>``, in an application
  of its own, ``<app>.llm-<version>``: :func:`version_builder`). Loads its engine
  in ``__init__`` (verifying the artifact's digest), batches with ``@serve.batch``, keeps
  tunables in ``user_config`` (``reconfigure``: max tokens, batch size, system prompt)
  and raises from ``check_health`` when the engine is unusable.
- ``Router`` (:mod:`services.inference.router`): the ingress, shared with the GPU
  builder in :mod:`services.inference.gpu`.
- :func:`app_builder` builds the router's application from the declarative config of
  :mod:`services.inference.serveconfig`; :func:`deploy` applies that config (the router
  and every version's application) to the running Serve instance.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle

from services.inference.applied import application_configs
from services.inference.responses import chat_params
from services.inference.router import Router
from services.inference.settings import InferenceSettings, ModelVersion
from services.inference.verify import check_artifact_signature


class LLMServer:
    """One model version on one replica."""

    def __init__(
        self,
        model_name: str,
        version: dict[str, Any],
        engine: dict[str, Any],
        governance: dict[str, Any] | None = None,
    ) -> None:
        from services.common.llm import LlamaCppEngine

        self.model_name = model_name
        self.version = ModelVersion(**version)
        if engine["kind"] != "llama_cpp":
            raise ValueError(
                "LLMServer runs the llama.cpp engine; GPU nodes use services.inference.gpu (Ray Serve LLM)"
            )
        check_artifact_signature(model_name, self.version, governance or {})
        self.engine = LlamaCppEngine(
            model_path=self.version.model_path,
            sha256=self.version.sha256,
            n_ctx=engine["n_ctx"],
            n_threads=engine["n_threads"],
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
        return {
            "version": self.version.version,
            "replica": self.replica,
            "digest": self.engine.digest,
            "model_file": self.engine.model_file,
            "max_tokens": self.max_tokens,
        }

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.0)
    async def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # llama.cpp's Python API generates one sequence at a time, so a batch is served in
        # order on one worker thread; batching still amortises the hop to that thread.
        return await asyncio.to_thread(lambda: [self._generate_one(r) for r in requests])

    async def generate_stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The answer as it is generated (the HTTP route's ``stream: true``): ``{"delta":
        text}`` items, then ``{"done": answer}``, the same answer :meth:`generate` gives. A
        caller that goes away (the generator closed) stops the generation at the next token."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def run() -> None:
            out = self._generate_one(
                request,
                on_text=lambda t: loop.call_soon_threadsafe(pieces.put_nowait, {"delta": t}),
                cancelled=cancelled,
            )
            loop.call_soon_threadsafe(pieces.put_nowait, {"done": out})

        worker = loop.run_in_executor(None, run)
        try:
            while True:
                item = await pieces.get()
                yield item
                if "done" in item:
                    break
        finally:
            cancelled.set()
            await worker

    def _generate_one(
        self, request: dict[str, Any], on_text: Any = None, cancelled: threading.Event | None = None
    ) -> dict[str, Any]:
        from services.common.llm import GenerationParams, replica_resources

        params = GenerationParams(**chat_params(request, self.max_tokens, self.system_prompt))
        try:
            gen = self.engine.generate(params, on_text=on_text, cancelled=cancelled)
        except (RuntimeError, ValueError) as exc:
            return {
                "error_type": type(exc).__name__,
                "error_message": str(exc),
                "version": self.version.version,
                "replica": self.replica,
            }
        resources = replica_resources()
        return {
            **gen.to_dict(),
            "version": self.version.version,
            "replica": self.replica,
            "response_model": self.engine.model_file,
            **resources,
        }


def app_builder(args: dict[str, Any]) -> serve.Application:
    """The router's application (``import_path services.inference.app:app_builder``), as
    used by ``serve deploy`` and KubeRay: the ingress, which finds each version's
    replicas by the names its ``user_config`` gives (``served``)."""
    router = serve.deployment(Router).options(
        name="router",
        num_replicas=1,
        max_ongoing_requests=args["router_max_ongoing_requests"],
        ray_actor_options={"num_cpus": 0},
    )
    return router.bind(args["model_name"])


def version_builder(args: dict[str, Any]) -> serve.Application:
    """One model version's application (``services.inference.app:version_builder``)."""
    engine = dict(args["engine"])
    dep = serve.deployment(LLMServer).options(
        name=args["deployment"],
        max_ongoing_requests=engine["max_ongoing_requests"],
        ray_actor_options={"num_cpus": engine["replica_num_cpus"], "num_gpus": engine["num_gpus"]},
        health_check_period_s=10,
    )
    return dep.bind(args["model_name"], args["artifact"], engine, args.get("governance"))


def _owned(settings: InferenceSettings, name: str, config: Any) -> bool:
    """An application this service deploys: its router, or a version whose owner it is."""
    return name == settings.app_name or (config is not None and (config.args or {}).get("owner") == settings.app_name)


def deploy(settings: InferenceSettings, timeout_s: float = 180.0) -> DeploymentHandle:
    """Apply the settings' Serve applications (:func:`application_configs`) to the running
    Serve instance (what ``serve deploy`` does through the dashboard's REST API) and wait
    until the router serves them. In steps, so that no request is routed to replicas that
    are not there: the new or changed versions first (the router as it is), then the
    router's new routing, then the versions it no longer routes to are deleted. Every
    other application of the Serve instance is kept as it is."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    client = _get_global_client()
    wanted = [ServeApplicationSchema(**a) for a in application_configs(settings)]
    router, versions = wanted[0], {a.name: a for a in wanted[1:]}
    deadline = time.monotonic() + timeout_s
    deployed = {
        name: status.deployed_app_config
        for name, status in serve.status().applications.items()
        if getattr(status, "deployed_app_config", None) is not None
    }
    others = [c for n, c in deployed.items() if not _owned(settings, n, c)]
    ours = {n: c for n, c in deployed.items() if _owned(settings, n, c)}

    def apply(apps: list[Any]) -> None:
        client.deploy_apps(ServeDeploySchema(applications=others + apps), _blocking=False)

    def wait(names: list[str]) -> None:
        while True:
            status = serve.status().applications
            for n in names:
                app = status.get(n)
                if app is not None and app.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise RuntimeError(f"{n}: {app.status}: {app.message}")
            if all(status.get(n) is not None and status[n].status == "RUNNING" for n in names):
                return
            if time.monotonic() > deadline:
                states = {n: (status[n].status if n in status else "absent") for n in names}
                raise TimeoutError(f"{settings.app_name} not running after {timeout_s:.0f}s: {states}")
            time.sleep(0.25)

    changed = [n for n, a in versions.items() if n not in ours or ours[n].args != a.args]
    if changed and settings.app_name in ours:  # 1. the new versions' replicas, routed to by nobody yet
        apply(list({**ours, **{n: versions[n] for n in changed}}.values()))
        wait(changed)
    removed = [n for n in ours if n != settings.app_name and n not in versions]
    # 2. the router's new routing (the versions it no longer routes to still there)
    apply([router, *versions.values(), *(ours[n] for n in removed)])
    wait([router.name, *versions])
    handle = _wait_for_routing(settings, deadline, timeout_s)
    if removed:  # 3. the versions nothing routes to any more
        apply([router, *versions.values()])
        while any(n in serve.status().applications for n in removed):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{settings.app_name}: {removed} not deleted after {timeout_s:.0f}s")
            time.sleep(0.25)
    return handle


def _wait_for_routing(settings: InferenceSettings, deadline: float, timeout_s: float) -> DeploymentHandle:
    target = settings.routing_config()
    handle = serve.get_app_handle(settings.app_name)
    while True:
        # a blocking handle call must not run on a caller's event loop: use a thread
        with ThreadPoolExecutor(1) as pool:
            routing = pool.submit(lambda: handle.routing.remote().result()).result()
        others = all(
            routing["models"].get(m) == {"weights": r["weights"], "shadows": r["shadows"]}
            for m, r in target["models"].items()
        )
        if routing["weights"] == target["weights"] and routing["shadows"] == target["shadows"] and others:
            return handle
        if time.monotonic() > deadline:
            raise TimeoutError(f"{settings.app_name}: routing not applied after {timeout_s:.0f}s")
        time.sleep(0.25)
