"""Settings of the inference service (env prefix ``ARGUS_INFERENCE_``).

Example: 90/10 canary plus a shadow candidate::

    ARGUS_INFERENCE_VERSIONS='[{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10},
                               {"version": "v3", "shadow": true}]'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.governance import GovernanceSettings
from services.common.settings import ServiceSettings
from services.inference.guardrails.policy import GuardrailSettings
from services.inference.journal import journal_config


class ModelVersion(BaseModel):
    """One servable version of the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    weight: float = Field(default=1.0, ge=0, description="Share of live traffic (relative to the other weights).")
    shadow: bool = Field(
        default=False, description="Mirror every request to this version; log its answer, never return it."
    )
    model_path: Path | None = Field(
        default=None,
        description="GGUF file (llama.cpp; default: the packaged SmolLM2 GGUF) or a local model directory "
        "(vLLM; required there), verified against sha256 where it is loaded.",
    )
    sha256: str | None = Field(
        default=None, description="Expected digest of the artifact: the replica refuses to load another file."
    )
    card_sha256: str | None = Field(default=None, description="Digest of the model card the artifact signature covers.")
    artifact_signature: dict[str, Any] | None = Field(
        default=None,
        description="A pipeline key's signature over (model, version, sha256, card digest), from the registry; "
        "the replica verifies it against the trust file before it loads a byte (docs/governance.md).",
    )
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0

    @model_validator(mode="after")
    def _shadow_takes_no_traffic(self) -> "ModelVersion":
        if self.shadow and self.weight not in (0, 1.0):
            raise ValueError(f"version {self.version}: a shadow version takes no live traffic; leave its weight out")
        return self

    @property
    def live_weight(self) -> float:
        return 0.0 if self.shadow else self.weight


class EngineSettings(BaseModel):
    """Tunables; everything but ``kind`` and ``n_ctx`` is reloaded live through Ray Serve's
    ``user_config`` (``reconfigure``) without restarting replicas."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["llama_cpp", "vllm"] = "llama_cpp"
    n_ctx: int = 2048
    n_threads: int = 1
    max_tokens: int = 64
    max_batch_size: int = 4
    # llama.cpp generates one sequence at a time, so waiting for a batch to fill only adds
    # latency to a lone request; a batch is whatever queued while the replica was busy
    batch_wait_timeout_s: float = 0.0
    max_ongoing_requests: int = 4
    replica_num_cpus: float = Field(
        default=0.5, description="Ray CPU reservation per replica (llama.cpp uses n_threads cores while generating)."
    )
    system_prompt: str = "You are a helpful, concise assistant. Answer in one or two sentences."
    # GPU nodes (vLLM through Ray Serve LLM)
    num_gpus: float = 0.0
    accelerator_type: str | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1


class GuardModelSettings(BaseModel):
    """Llama Guard (or a model with its answer format) served by vLLM beside the versions,
    taking the output.offensive rail on GPU nodes (docs/guardrails.md). A pinned artifact,
    verified where it loads, like a model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str = Field(default="llama-guard", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    model_path: Path = Field(description="The guard model's local directory (never a hub id).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The artifact digest the replica verifies.")
    card_sha256: str | None = None
    artifact_signature: dict[str, Any] | None = Field(
        default=None, description="A pipeline key's signature over the artifact, as for model versions."
    )
    num_gpus: float = 1.0
    gpu_memory_utilization: float = 0.3
    max_model_len: int = 4096
    min_replicas: int = 1
    max_replicas: int = 1


class Price(BaseModel):
    """What an answer of one model (or one version of it) costs, in ``price_currency``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_per_1k: float = Field(default=0.0, ge=0, description="Per 1,000 input tokens.")
    output_per_1k: float = Field(default=0.0, ge=0, description="Per 1,000 output tokens.")
    per_replica_second: float = Field(
        default=0.0,
        ge=0,
        description="Self-hosted engines: what a replica (its GPUs included) costs per second; an answer is "
        "charged its engine time (an upper bound while the replica batches several answers).",
    )

    def cost(self, input_tokens: int, output_tokens: int, latency_ms: float | None) -> float:
        return (
            input_tokens * self.input_per_1k / 1000
            + output_tokens * self.output_per_1k / 1000
            + (latency_ms or 0.0) / 1000 * self.per_replica_second
        )


class BridgeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str = "argus-inference"
    max_in_flight: int = Field(default=8, ge=1, description="Requests dispatched to Serve and not yet answered.")
    default_timeout_s: float = Field(default=120.0, description="Per-request limit when a request carries no deadline.")
    shadow_grace_s: float = Field(default=30.0, description="How long a shadow answer may trail its primary.")
    commit_interval_s: float = 0.5
    dedupe_window_s: float = Field(
        default=900.0,
        ge=0,
        description="A request id seen again within this window (a producer's retry) is not answered again: "
        "dropped with a metric, its first answer is on the responses topic (0: off).",
    )
    dedupe_max_ids: int = Field(default=200_000, ge=1, description="Request ids remembered per bridge, newest kept.")


class GatewaySettings(BaseModel):
    """The tenant gateway: tenants' request topics -> the shared requests topic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    group_id: str = "argus-inference-gateway"
    max_in_flight: int = Field(default=64, ge=1, description="Requests forwarded and not yet acknowledged.")
    discovery_interval_s: float = Field(default=5.0, gt=0, description="How soon a new tenant's topic is consumed.")
    commit_interval_s: float = 0.5
    reply_timeout_s: float = Field(
        default=10.0, gt=0, description="How long the bridge tries to copy an answer to a tenant's reply topic."
    )


class ServedModel(BaseModel):
    """A further model served next to ``model_name``, with its own versions (weights,
    shadows, artifacts) and deployments ``llm-<name>-<version>``; requests name it in
    ``model``. Its replicas run the service's engine kind with its own system prompt and
    token cap when given."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    versions: tuple[ModelVersion, ...] = (ModelVersion(version="v1"),)
    system_prompt: str | None = Field(default=None, max_length=4000)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)

    @model_validator(mode="after")
    def _servable(self) -> "ServedModel":
        names = [v.version for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name}: duplicate versions {names}")
        if not any(v.live_weight > 0 for v in self.versions):
            raise ValueError(f"model {self.name}: at least one non-shadow version needs a weight above 0")
        return self


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARGUS_INFERENCE_", frozen=True, env_nested_delimiter="__", extra="ignore"
    )

    service_name: str = "inference"
    model_name: str = "smollm2-135m-instruct"
    versions: tuple[ModelVersion, ...] = (ModelVersion(version="v1"),)
    models: tuple[ServedModel, ...] = Field(
        default=(),
        description="More models served side by side with model_name (each its own versions and deployments), "
        'e.g. ARGUS_INFERENCE_MODELS=\'[{"name": "smollm2-terse", "system_prompt": "Answer in one word."}]\'.',
    )
    engine: EngineSettings = EngineSettings()
    bridge: BridgeSettings = BridgeSettings()
    gateway: GatewaySettings = GatewaySettings()
    app_name: str = "argus-inference"
    route_prefix: str = "/"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    http_api_keys_file: Path | None = Field(
        default=None,
        description="API keys of the HTTP routes (`argus keys create`); without one every HTTP call is refused.",
    )
    http_rate_per_minute: int = Field(
        default=60, ge=1, description="Requests per minute per key (unless the key sets one)."
    )
    allow_unsigned_models: bool = Field(
        default=False,
        description="Serve versions whose artifact no pipeline key signed (the local stack allows it for the packaged "
        "model; production refuses).",
    )
    governance: GovernanceSettings = Field(
        default_factory=GovernanceSettings, description="The trust file artifact signatures are checked against."
    )
    guardrails: GuardrailSettings = Field(
        default_factory=GuardrailSettings,
        description="Guard-rail policies, default and per tenant (docs/guardrails.md); reloaded without a restart.",
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description='The price table: "<model>" or "<model>@<version>" (a version\'s price wins) -> Price; '
        "answers of a model without one carry no cost.",
    )
    price_currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    guard_model: GuardModelSettings | None = Field(
        default=None, description="A Llama Guard model on GPU nodes for the output.offensive rail (vLLM only)."
    )
    ray_address: str | None = Field(default=None, description="Existing Ray cluster; default: start a local one.")
    ray_num_cpus: int = 2
    ray_auth_mode: Literal["token", "disabled"] = Field(
        default="token",
        description="Ray's token authentication (RAY_AUTH_MODE); `disabled` lets anyone who reaches Ray run code.",
    )
    serve_low_latency: bool = Field(
        default=True,
        description="Ray Serve's request path without extra threads or object-store hops: replicas run "
        "their code and their handles' routers on their own event loop and send requests and answers "
        "over Ray's inter-deployment gRPC (token-authenticated like the rest of Ray); see "
        "docs/inference.md#where-the-time-goes.",
    )

    @model_validator(mode="after")
    def _versions_are_servable(self) -> "InferenceSettings":
        names = [v.version for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model versions: {names}")
        if not any(v.live_weight > 0 for v in self.versions):
            raise ValueError("at least one non-shadow version needs a weight above 0")
        served = [self.model_name, *(m.name for m in self.models)]
        if len(set(served)) != len(served):
            raise ValueError(f"duplicate served model names: {served}")
        places = [self.version_deployment(m, v.version)[1] for m, vs in self.served_versions().items() for v in vs]
        clash = sorted({d for d in places if places.count(d) > 1})
        if clash:  # one application would hold two models' versions: one would answer for the other
            raise ValueError(f"model and version names give the same deployment twice: {clash}; rename one")
        if self.guard_model is not None and self.engine.kind != "vllm":
            raise ValueError(
                "guard_model runs on vLLM (engine.kind=vllm, GPU nodes); on CPU the output.offensive rail uses "
                "the packaged offensive-language model"
            )
        if self.engine.kind == "vllm":
            unpinned = [
                v.version if m == self.model_name else f"{m}/{v.version}"
                for m, vs in self.served_versions().items()
                for v in vs
                if v.model_path is None
            ]
            if unpinned:
                raise ValueError(
                    f"vLLM serves only pinned local artifacts: give versions {unpinned} a model_path (a model "
                    "directory or file, with its sha256); a hub model id would load whatever the hub serves that day"
                )
        return self

    def routing_config(self) -> dict:
        """The Router's ``user_config``: changing only this reloads without a restart."""
        return {
            "weights": {v.version: v.live_weight for v in self.versions},
            "shadows": [v.version for v in self.versions if v.shadow],
            "shadow_grace_s": self.bridge.shadow_grace_s,
            "http": {
                "api_keys_file": str(self.http_api_keys_file) if self.http_api_keys_file else None,
                "rate_per_minute": self.http_rate_per_minute,
            },
            "guardrails": self.guardrails.model_dump(mode="json"),
            "prices": {k: v.model_dump(mode="json") for k, v in self.prices.items()},
            "models": {
                m.name: {
                    "weights": {v.version: v.live_weight for v in m.versions},
                    "shadows": [v.version for v in m.versions if v.shadow],
                }
                for m in self.models
            },
            # where the HTTP route publishes its calls (connection settings and file paths, no secret)
            "journal": journal_config(self.kafka),
            # where each version's replicas are: an application of its own per (model, version)
            "served": {
                model: {v.version: list(self.version_deployment(model, v.version)) for v in versions}
                for model, versions in self.served_versions().items()
            },
        }

    def served_versions(self) -> dict[str, tuple[ModelVersion, ...]]:
        """Every model served here (``model_name`` first) and its versions."""
        return {self.model_name: self.versions, **{m.name: m.versions for m in self.models}}

    def version_deployment(self, model: str, version: str) -> tuple[str, str]:
        """(Serve application, deployment) of a model version's replicas: one application
        per version, so that adding, changing or draining one version (a canary, a
        promotion) starts or stops only its replicas, never another's (Serve replaces
        every replica of an application whose build arguments change)."""
        deployment = f"llm-{version}" if model == self.model_name else f"llm-{model}-{version}"
        return f"{self.app_name}.{deployment}", deployment

    def engine_user_config(self) -> dict:
        e = self.engine
        return {
            "max_tokens": e.max_tokens,
            "max_batch_size": e.max_batch_size,
            "batch_wait_timeout_s": e.batch_wait_timeout_s,
            "system_prompt": e.system_prompt,
        }
