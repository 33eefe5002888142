"""The Serve config the inference service applies, for the engine its settings name: the
CPU (llama.cpp) config of :mod:`services.inference.serveconfig` or the vLLM one of
:mod:`services.inference.gpu` (imported only for vLLM: it needs Ray Serve LLM)."""

from __future__ import annotations

from typing import Any

from services.inference.serveconfig import serve_config
from services.inference.settings import InferenceSettings


def application_config(settings: InferenceSettings, trust_file: str | None = None) -> dict[str, Any]:
    """The config of the engine the settings name: :func:`serve_config` on CPU (llama.cpp),
    :func:`~services.inference.gpu.gpu_serve_config` for vLLM. What :func:`deploy
    <services.inference.app.deploy>` applies and `argus inference serve-config` prints."""
    if settings.engine.kind == "vllm":
        from services.inference.gpu import gpu_serve_config

        return gpu_serve_config(settings, trust_file)
    return serve_config(settings, trust_file)


def serve_config_v2(settings: InferenceSettings, trust_file: str | None = None) -> str:
    """:func:`application_config` as a Serve config file (KubeRay's ``serveConfigV2``)."""
    import yaml

    return yaml.safe_dump({"applications": [application_config(settings, trust_file)]}, sort_keys=False)
