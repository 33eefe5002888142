"""The Serve config the inference service applies, for the engine its settings name: the
CPU (llama.cpp) config of :mod:`services.inference.serveconfig` or the vLLM one of
:mod:`services.inference.gpu` (imported only for vLLM: it needs Ray Serve LLM)."""

from __future__ import annotations

from typing import Any

from services.inference.serveconfig import serve_applications
from services.inference.settings import InferenceSettings


def application_configs(settings: InferenceSettings, trust_file: str | None = None) -> list[dict[str, Any]]:
    """The applications of the engine the settings name (the router first, then one per
    model version): :func:`serve_applications` on CPU (llama.cpp),
    :func:`~services.inference.gpu.gpu_serve_applications` for vLLM. What :func:`deploy
    <services.inference.app.deploy>` applies and `argus inference serve-config` prints."""
    if settings.engine.kind == "vllm":
        from services.inference.gpu import gpu_serve_applications

        return gpu_serve_applications(settings, trust_file)
    return serve_applications(settings, trust_file)


def serve_config_v2(settings: InferenceSettings, trust_file: str | None = None) -> str:
    """:func:`application_configs` as a Serve config file (KubeRay's ``serveConfigV2``)."""
    import yaml

    return yaml.safe_dump({"applications": application_configs(settings, trust_file)}, sort_keys=False)
