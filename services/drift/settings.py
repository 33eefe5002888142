"""Settings of the drift service (env prefix ``ARGUS_DRIFT_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class SemanticSettings(BaseModel):
    """Semantic drift of prompts: embeddings (local GGUF) + MMD permutation test."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    max_per_s: float = 8.0  # embeddings per second per worker (a sample of the prompts)
    batch: int = 16
    queue: int = 256  # sampled prompts waiting for the embedder; beyond it, bursts are skipped
    reference_size: int = 200
    window: int = 100
    step: int = 50
    permutations: int = 4000  # alpha = 1/(permutations+1): <= 0.5 false alarms per 100k at step 50 (union bound)
    dims: int = 16


class DriftSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ARGUS_DRIFT_", frozen=True, env_nested_delimiter="__", extra="ignore")

    service_name: str = "drift"
    app_id: str = "argus-drift"
    partitions: int = 3
    checkpoint_every: int = 200  # events per stream between state checkpoints to the faust table
    feedback_join_size: int = Field(
        default=200_000, ge=1, description="Responses remembered per worker to attribute feedback to its model."
    )
    rate_sides: dict[str, Literal["up", "down", "both"]] = Field(
        default_factory=dict,
        description="Which way each binary rate is watched, over the defaults (errors, refusals: up; "
        'negative_feedback: both), e.g. {"error": "both"}.',
    )
    broker_session_timeout_s: float = 10.0
    health_enabled: bool = True
    semantic: SemanticSettings = SemanticSettings()
