"""The inference application's declarative Serve config: what ``serve deploy``, KubeRay's
``serveConfigV2`` and :func:`services.inference.app.deploy` apply."""

from __future__ import annotations

from typing import Any

from services.inference.settings import InferenceSettings

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


def static_args(settings: InferenceSettings, trust_file: str | None = None) -> dict[str, Any]:
    """What the application is built from: only what needs new replicas when it
    changes (which versions exist, their artifacts, the engine's load-time settings)."""
    e = settings.engine
    return {
        "model_name": settings.model_name,
        "versions": [
            v.model_dump(mode="json", include={"version", "model_path", "sha256", "card_sha256", "artifact_signature"})
            for v in settings.versions
        ],
        "models": [
            {
                "name": m.name,
                "versions": [
                    v.model_dump(
                        mode="json", include={"version", "model_path", "sha256", "card_sha256", "artifact_signature"}
                    )
                    for v in m.versions
                ],
            }
            for m in settings.models
        ],
        "governance": governance_args(settings, trust_file),
        "engine": e.model_dump(
            mode="json", exclude={"max_tokens", "max_batch_size", "batch_wait_timeout_s", "system_prompt"}
        ),
        "router_max_ongoing_requests": max(64, settings.bridge.max_in_flight * 4),
    }


def serve_config(settings: InferenceSettings, trust_file: str | None = None) -> dict[str, Any]:
    """The Serve application config (the ``applications[]`` entry of a ``serve deploy``
    file or a KubeRay RayService ``serveConfigV2``). Weights, shadows and engine
    tunables are per-deployment ``user_config``; changing only those reconfigures the
    running replicas in place: no restart, no dropped request."""
    engine_user_config = settings.engine_user_config()
    return {
        "name": settings.app_name,
        "route_prefix": settings.route_prefix,
        "import_path": "services.inference.app:app_builder",
        **({"runtime_env": {"env_vars": dict(LOW_LATENCY_REPLICA_ENV)}} if settings.serve_low_latency else {}),
        "args": static_args(settings, trust_file),
        "deployments": [{"name": "router", "user_config": settings.routing_config()}]
        + [
            {
                "name": f"llm-{v.version}",
                "user_config": engine_user_config,
                "autoscaling_config": {
                    "min_replicas": v.min_replicas,
                    "max_replicas": v.max_replicas,
                    "target_ongoing_requests": v.target_ongoing_requests,
                },
            }
            for v in settings.versions
        ]
        + [
            {
                "name": f"llm-{m.name}-{v.version}",
                "user_config": {
                    **engine_user_config,
                    **({"system_prompt": m.system_prompt} if m.system_prompt is not None else {}),
                    **({"max_tokens": m.max_tokens} if m.max_tokens is not None else {}),
                },
                "autoscaling_config": {
                    "min_replicas": v.min_replicas,
                    "max_replicas": v.max_replicas,
                    "target_ongoing_requests": v.target_ongoing_requests,
                },
            }
            for m in settings.models
            for v in m.versions
        ],
    }
