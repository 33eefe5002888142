"""Settings of the logging (ingest) service, env prefix ``ARGUS_INGEST_``.

PII policy per tenant, e.g.::

    ARGUS_INGEST_PII__DEFAULT='{"mode": "redact"}'
    ARGUS_INGEST_PII__TENANTS='{"bank": {"mode": "hash"}, "clinic": {"store_text": false}, "crm": {"keep_user": true}}'
    ARGUS_INGEST_PII__HMAC_KEY=...   # required for "hash"; keep it stable so hashes join
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.governance import GovernanceSettings
from services.common.pii import PiiPolicy
from services.common.settings import PipelineSettings, ServiceSettings
from services.ingest.transforms import TABLES


class PiiSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    default: PiiPolicy = PiiPolicy()
    tenants: dict[str, PiiPolicy] = Field(default_factory=dict)
    hmac_key: SecretStr | None = None
    # Screening is linear in the text (about 1.5 s per MB of adversarial text on a slow
    # core); past this budget a text is stored as [UNSCREENED], never in clear, so one
    # message cannot hold the event loop every pipeline shares.
    time_budget_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _hash_needs_a_key(self) -> "PiiSettings":
        uses_hash = self.default.mode == "hash" or any(p.mode == "hash" for p in self.tenants.values())
        if uses_hash and not (self.hmac_key and self.hmac_key.get_secret_value()):
            raise ValueError("a PII policy uses mode 'hash': set ARGUS_INGEST_PII__HMAC_KEY")
        return self


def _all_topics() -> tuple[str, ...]:
    return tuple(t for spec in TABLES.values() for t in spec.topics)


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARGUS_INGEST_", frozen=True, env_nested_delimiter="__", extra="ignore"
    )

    service_name: str = "ingest"
    group_id: str = "argus-ingest"
    topics: tuple[str, ...] = Field(default_factory=_all_topics, description="Registry keys to ingest.")
    pii: PiiSettings = PiiSettings()
    governance: GovernanceSettings = Field(
        default_factory=GovernanceSettings,
        description="The trust file trigger and registry records are checked against (ARGUS_GOVERNANCE_*): "
        "ClickHouse stores only what a trusted key of the right role signed.",
    )
    pipeline: PipelineSettings = PipelineSettings(batch_max_messages=20000, batch_max_seconds=0.5)
    apply_migrations: bool = Field(
        False,
        description="Apply ClickHouse migrations at start-up. Needs a DSN with DDL rights: "
        "the service's own user (argus_ingest) may only insert, so migrations are the admin's job "
        "(`argus migrate`, `argus stack up`, the chart's migration Job).",
    )
    avro_passthrough: bool = Field(
        True,
        description="Pass clean response messages to ClickHouse as the producer's Avro bytes "
        "(ClickHouse decodes them); off: every message is decoded and re-built in Python.",
    )
