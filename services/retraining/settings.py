"""Settings of the retraining service (env prefix ``ARGUS_RETRAINING_``). Traffic changes
use the inference service's own settings (``ARGUS_INFERENCE_*``: app name, Ray address,
engine), so both agree on what is deployed."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "argus" / "files" / "retraining.yaml"


class RetrainingSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARGUS_RETRAINING_", frozen=True, env_nested_delimiter="__", extra="ignore"
    )

    service_name: str = "retraining"
    group_id: str = "argus-retraining"
    config_file: Path = DEFAULT_CONFIG
    actor: str = "argus-retraining"
    webhook_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    rollout_enabled: bool = Field(
        True, description="Change inference traffic (canary, promote, rollback) through Ray Serve."
    )
