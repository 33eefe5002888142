"""Settings of the alerting service (env prefix ``ARGUS_ALERTING_``).

Webhook secrets are named in the alerting config and their values live here::

    ARGUS_ALERTING_CONFIG_FILE=/etc/argus/alerting.yaml
    ARGUS_ALERTING_WEBHOOK_SECRETS='{"oncall": "<random 32 bytes>"}'
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.contracts import contract_path
from services.common.governance import GovernanceSettings
from services.common.settings import ServiceSettings

# the Helm chart ships the same file as its default ConfigMap
DEFAULT_CONFIG = contract_path("alerting.yaml")  # the Helm chart's default, shipped in the package


class AlertingSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARGUS_ALERTING_", frozen=True, env_nested_delimiter="__", extra="ignore"
    )

    service_name: str = "alerting"
    app_id: str = "argus-alerting"
    config_file: Path = DEFAULT_CONFIG
    webhook_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    external_url: str = Field(
        "http://127.0.0.1:9095", description="Where the alerting API is reachable (generatorURL, externalURL)."
    )
    partitions: int = 3  # of the source topics' extract agents
    evaluation_interval_s: float = 1.0  # every window re-evaluated (time passes, `for`, resolution)
    min_evaluation_gap_s: float = 0.05  # windows touched by new signals: evaluated at most this often
    lag_groups: tuple[str, ...] = Field(
        default=(), description="Consumer groups watched by consumer_lag rules; empty: every group."
    )
    lag_interval_s: float = 15.0
    delivery_initial_backoff_s: float = 0.05
    delivery_max_backoff_s: float = 5.0
    delivery_give_up_after_s: float = 300.0
    broker_session_timeout_s: float = 10.0
    health_enabled: bool = True
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token of /api/v2/* (without one, that API refuses every call)."
    )
    api_token_file: Path | None = Field(default=None, description="Read the API token from this file instead.")
    config_signature_file: Path | None = Field(
        default=None,
        description="The rules' detached signature (`argus alerts sign-rules`); default: the config file + `.sig`.",
    )
    allow_unsigned_rules: bool = Field(
        default=False,
        description="Start with rules no operator signed (the local stack and compose demo allow it; production refuses).",
    )
    governance: GovernanceSettings = Field(
        default_factory=GovernanceSettings,
        description="The trust file silences' signatures are checked against (docs/governance.md).",
    )

    def token(self) -> SecretStr | None:
        if self.api_token_file is not None:
            value = Path(self.api_token_file).read_text().strip()
            if not value:
                raise ValueError(f"{self.api_token_file} is empty")
            return SecretStr(value)
        return self.api_token

    def signature_path(self) -> Path:
        return self.config_signature_file or Path(f"{self.config_file}.sig")


def check_rules(settings: AlertingSettings) -> str:
    """Who signed the rules this service is about to load (an operator key of the trust
    file, over the parsed document), or that unsigned rules are allowed; raises
    :class:`~services.common.governance.Refused` otherwise: the service does not start."""
    from services.common.governance import check_policy_file, trust_path

    return check_policy_file(
        "alerting-rules",
        Path(settings.config_file),
        settings.signature_path(),
        trust_path(settings.governance),
        settings.allow_unsigned_rules,
        "`argus alerts sign-rules FILE --by OPERATOR`, or set ARGUS_ALERTING_ALLOW_UNSIGNED_RULES for a demo",
    )
