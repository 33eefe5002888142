"""Settings of the drift service (env prefix ``ARGUS_DRIFT_``)."""
from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class DriftSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ARGUS_DRIFT_", frozen=True, env_nested_delimiter="__", extra="ignore")

    service_name: str = "drift"
    app_id: str = "argus-drift"
    partitions: int = 3
    checkpoint_every: int = 200  # events per stream between state checkpoints to the faust table
    broker_session_timeout_s: float = 10.0
    health_enabled: bool = True
