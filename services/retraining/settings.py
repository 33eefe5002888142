"""Settings of the retraining service (env prefix ``ARGUS_RETRAINING_``). Traffic changes
are serving-state records the inference service applies (``argus.serving.state``): this
service needs no address or setting of the inference service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.contracts import contract_path
from services.common.governance import GovernanceSettings
from services.common.settings import ServiceSettings

DEFAULT_CONFIG = contract_path("retraining.yaml")  # the Helm chart's default, shipped in the package


class RetrainingSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARGUS_RETRAINING_", frozen=True, env_nested_delimiter="__", extra="ignore"
    )

    service_name: str = "retraining"
    group_id: str = "argus-retraining"
    config_file: Path = DEFAULT_CONFIG
    actor: str = Field(
        "argus-retraining",
        description="This service's identity: the name its signing key is trusted under (role `service`).",
    )
    audit_checkpoint_s: float = Field(
        60.0, gt=0, description="How often a signed checkpoint (count, head hash) closes the audit chain's new events."
    )
    governance: GovernanceSettings = Field(
        default_factory=GovernanceSettings,
        description="The trust file and this service's signing key (ARGUS_GOVERNANCE_*; default the local stack's).",
    )
    config_signature_file: Path | None = Field(
        default=None,
        description="The policies' detached signature (`argus retrain sign-policies`); default: the config file + `.sig`.",
    )
    allow_unsigned_policies: bool = Field(
        default=False,
        description="Start with policies no operator signed (the local stack and compose demo allow it).",
    )
    webhook_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    rollout_enabled: bool = Field(
        True, description="Change inference traffic (canary, promote, rollback) with serving-state records."
    )
    rollout_timeout_s: float = Field(
        300.0, gt=0, description="How long to wait for the inference service to apply a serving state."
    )
    rollout_retry_s: float = Field(30.0, ge=0, description="Pause before a failed traffic change is asked for again.")


def check_policies(settings: RetrainingSettings) -> str:
    """Who signed the policies this service is about to load (an operator key), or that
    unsigned ones are allowed; :class:`~services.common.governance.Refused` otherwise."""
    from services.common.governance import check_policy_file, trust_path

    return check_policy_file(
        "retraining-policies",
        Path(settings.config_file),
        settings.config_signature_file or Path(f"{settings.config_file}.sig"),
        trust_path(settings.governance),
        settings.allow_unsigned_policies,
        "`argus retrain sign-policies FILE --by OPERATOR`, or set ARGUS_RETRAINING_ALLOW_UNSIGNED_POLICIES for a demo",
    )
