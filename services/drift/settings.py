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


class FairnessSettings(BaseModel):
    """Fairness on live traffic (docs/fairness.md): outcome rates and means per segment,
    each segment against the rest of its dimension, Benjamini-Hochberg across all tests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    dimensions: tuple[str, ...] = Field(
        default=("tenant", "script"),
        description="Segment dimensions: request metadata keys chosen per deployment (locale, region, age_band, "
        "plan...) and the derived tenant and script.",
    )
    window: int = Field(default=8000, ge=100, description="Answers per model the tests look at.")
    evaluate_every: int = Field(default=250, ge=1)
    fdr: float = Field(default=1e-4, gt=0, lt=1, description="Benjamini-Hochberg false-discovery rate per evaluation.")
    min_segment: int = Field(default=200, ge=10, description="Answers a segment (and the rest) needs to be tested.")
    min_ratio: float = Field(default=1.5, gt=1, description="Smallest rate ratio worth an alarm.")
    min_difference: float = Field(default=0.01, ge=0, description="Smallest rate difference worth an alarm.")
    min_effect: float = Field(default=0.2, ge=0, description="Smallest standardised mean difference worth an alarm.")
    join_size: int = Field(default=200_000, ge=1, description="Requests remembered per worker to join their answers.")


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
    fairness: FairnessSettings = FairnessSettings()
