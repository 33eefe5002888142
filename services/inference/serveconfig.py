"""The inference application's declarative Serve config: what ``serve deploy``, KubeRay's
``serveConfigV2`` and :func:`services.inference.app.deploy` apply."""

from __future__ import annotations

from typing import Any

from services.inference.settings import InferenceSettings, ModelVersion

# Ray Serve's request path with fewer hops (Ray 2.60; what its RAY_SERVE_THROUGHPUT_OPTIMIZED
# mode sets, without direct ingress, which would open an HTTP port on every replica).
# Measured here (a no-op call, p50): driver -> replica 4.6 -> 2.2 ms, driver -> replica ->
# replica 12.9 -> 6.4 ms. User code on the replica's own loop is safe because nothing of
# Argus blocks it: generation and the guard rails run in worker threads.
LOW_LATENCY_REPLICA_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
}
# what the process that calls the Router (bridge, tests) needs: requests over gRPC too
LOW_LATENCY_CALLER_ENV = {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"}


def governance_args(settings: InferenceSettings, trust_file: str | None = None) -> dict[str, Any]:
    """What a replica checks an artifact's signature against: the trust file's public keys
    (not secret; carried in the config so a replica on another node needs no file) and
    whether unsigned models may be served. With ``trust_file``, the path every node of the
    Ray cluster mounts the trust file at instead (KubeRay: the trust Secret), so the
    config does not go stale when the trust file changes."""
    import yaml

    from services.common.governance import trust_path

    if trust_file is not None:
        return {"allow_unsigned": settings.allow_unsigned_models, "trust_file": trust_file}

    path = trust_path(settings.governance)
    trust = yaml.safe_load(path.read_text()) if path.exists() else None
    return {"allow_unsigned": settings.allow_unsigned_models, "trust": trust}


def _artifact(v: ModelVersion) -> dict[str, Any]:
    return v.model_dump(mode="json", include={"version", "model_path", "sha256", "card_sha256", "artifact_signature"})


def _engine_args(settings: InferenceSettings) -> dict[str, Any]:
    """The engine's load-time settings (a change needs new replicas)."""
    return settings.engine.model_dump(
        mode="json", exclude={"max_tokens", "max_batch_size", "batch_wait_timeout_s", "system_prompt"}
    )


def router_args(settings: InferenceSettings) -> dict[str, Any]:
    """What the router application is built from: nothing a canary or a promotion
    changes (versions and weights are its ``user_config``), so the ingress is never
    replaced by one."""
    return {
        "model_name": settings.model_name,
        "router_max_ongoing_requests": max(64, settings.bridge.max_in_flight * 4),
    }


def version_args(
    settings: InferenceSettings, model: str, version: ModelVersion, trust_file: str | None = None
) -> dict[str, Any]:
    """What one version's application is built from: its artifact, the engine's load-time
    settings and what its signature is checked against; ``owner`` names the router
    application it belongs to (:func:`services.inference.app.deploy` keeps other owners')."""
    _, deployment = settings.version_deployment(model, version.version)
    return {
        "owner": settings.app_name,
        "model_name": model,
        "deployment": deployment,
        "artifact": _artifact(version),
        "governance": governance_args(settings, trust_file),
        "engine": _engine_args(settings),
    }


def _runtime_env(settings: InferenceSettings) -> dict[str, Any]:
    return {"runtime_env": {"env_vars": dict(LOW_LATENCY_REPLICA_ENV)}} if settings.serve_low_latency else {}


def version_user_config(settings: InferenceSettings, model: str) -> dict[str, Any]:
    """A model's replicas' tunables (reconfigured in place): the engine's, with the
    model's own system prompt and token cap where it has them."""
    out = settings.engine_user_config()
    for m in settings.models:
        if m.name == model:
            out.update({"system_prompt": m.system_prompt} if m.system_prompt is not None else {})
            out.update({"max_tokens": m.max_tokens} if m.max_tokens is not None else {})
    return out


def serve_applications(settings: InferenceSettings, trust_file: str | None = None) -> list[dict[str, Any]]:
    """The Serve applications (``applications[]`` of a ``serve deploy`` file or a KubeRay
    RayService ``serveConfigV2``): the router (the ingress: HTTP route and the bridge's
    handle, ``settings.app_name``) and one application per model version (no route),
    which the router calls by name. Weights, shadows and engine tunables are
    ``user_config``; changing only those reconfigures the running replicas in place: no
    restart, no dropped request. Adding or changing a version's artifact builds that
    version's application only."""
    router = {
        "name": settings.app_name,
        "route_prefix": settings.route_prefix,
        "import_path": "services.inference.app:app_builder",
        **_runtime_env(settings),
        "args": router_args(settings),
        "deployments": [{"name": "router", "user_config": settings.routing_config()}],
    }
    versions = []
    for model, served in settings.served_versions().items():
        for v in served:
            app, deployment = settings.version_deployment(model, v.version)
            versions.append(
                {
                    "name": app,
                    "route_prefix": None,
                    "import_path": "services.inference.app:version_builder",
                    **_runtime_env(settings),
                    "args": version_args(settings, model, v, trust_file),
                    "deployments": [
                        {
                            "name": deployment,
                            "user_config": version_user_config(settings, model),
                            "autoscaling_config": {
                                "min_replicas": v.min_replicas,
                                "max_replicas": v.max_replicas,
                                "target_ongoing_requests": v.target_ongoing_requests,
                            },
                        }
                    ],
                }
            )
    return [router, *versions]
