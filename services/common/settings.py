"""Settings: one frozen pydantic ``BaseSettings`` per service, read from the environment
once at start-up and passed down.

Every service's settings class is built by :func:`service_settings`, which gives it the
env prefix ``ARGUS_<SERVICE>_`` and ``__`` as the nested delimiter, so for the ingest
service ``ARGUS_INGEST_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` sets
``settings.kafka.bootstrap_servers``. Credentials are ``SecretStr``: they print as
``**********`` and are only unwrapped where a client is built.

Example::

    >>> s = IngestSettings()            # doctest: +SKIP
    >>> s.kafka.topic("inference-requests")
    'argus.inference.requests'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    """How to reach the Kafka cluster (and optionally a Confluent-compatible schema registry)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "argus"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(
        default=None, description="Read the SASL password from this file (a mounted Secret) instead of the env."
    )
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    topic_prefix: str = Field(
        default="",
        description="Prepended to every registry topic name: isolates environments and tests on one cluster.",
    )
    schema_registry_url: str | None = None
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    replication: Literal["registry", "single-broker"] = Field(
        default="registry",
        description="Replication of the topics Argus creates: `registry` takes each topic's factor and "
        "min.insync.replicas from schemas/topics (3 and 2 unless a topic says otherwise; faust's and the "
        "tenants' topics get 3 and 2); `single-broker` makes every topic 1 and 1, for a cluster of one "
        "broker (the local stack, docker-compose).",
    )

    def replicas(self, factor: int = 3, min_insync: int = 2) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) of a topic the registry gives these."""
        return (1, 1) if self.replication == "single-broker" else (factor, min_insync)

    def password(self) -> str | None:
        """The SASL password: from ``sasl_password_file`` when set, else ``sasl_password``."""
        if self.sasl_password_file is not None:
            value = Path(self.sasl_password_file).read_text().strip()
            if not value:
                raise ValueError(f"{self.sasl_password_file} is empty")
            return value
        return self.sasl_password.get_secret_value() if self.sasl_password else None

    def as_env(self, prefix: str) -> dict[str, str]:
        """These settings as ``<prefix>KAFKA__*`` variables (for a child process); the
        password travels as a file path when there is one."""
        out = {
            f"{prefix}KAFKA__BOOTSTRAP_SERVERS": self.bootstrap_servers,
            f"{prefix}KAFKA__TOPIC_PREFIX": self.topic_prefix,
        }
        out[f"{prefix}KAFKA__SECURITY_PROTOCOL"] = self.security_protocol
        out[f"{prefix}KAFKA__REPLICATION"] = self.replication
        for name in (
            "sasl_mechanism",
            "sasl_username",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "sasl_password_file",
        ):
            value = getattr(self, name)
            if value is not None:
                out[f"{prefix}KAFKA__{name.upper()}"] = str(value)
        if self.sasl_password is not None and self.sasl_password_file is None:
            out[f"{prefix}KAFKA__SASL_PASSWORD"] = self.sasl_password.get_secret_value()
        return out

    def topic(self, key: str) -> str:
        """Kafka topic name for a registry key, e.g. ``inference-requests``."""
        from services.common.registry import get_topic

        return self.topic_prefix + get_topic(key).name


class ClickHouseSettings(BaseModel):
    """One DSN: ``http(s)://user:password@host:port/database`` or ``chdb:///abs/dir``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dsn: SecretStr = SecretStr("http://127.0.0.1:8123/argus")
    dsn_file: Path | None = Field(
        default=None, description="Read the DSN (with its password) from this file, e.g. a mounted Secret."
    )
    connect_timeout_s: float = 10.0
    send_receive_timeout_s: float = 300.0
    cluster: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="A ClickHouse cluster (remote_servers) to migrate: every DDL ON CLUSTER, tables "
        "Replicated*MergeTree, a Distributed <table>_all for reads across shards (docs/deploy.md). "
        "None: one server (the local engine).",
    )

    @model_validator(mode="before")
    @classmethod
    def _dsn_from_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("dsn_file"):
            text = Path(data["dsn_file"]).read_text().strip()
            if not text:
                raise ValueError(f"{data['dsn_file']} is empty")
            data = {**data, "dsn": text}
        return data

    @field_validator("dsn")
    @classmethod
    def _known_scheme(cls, v: SecretStr) -> SecretStr:
        scheme = urlsplit(v.get_secret_value()).scheme
        if scheme not in ("http", "https", "chdb"):
            raise ValueError(f"ClickHouse DSN scheme must be http, https or chdb, not {scheme!r}")
        return v

    @property
    def database(self) -> str:
        parts = urlsplit(self.dsn.get_secret_value())
        if parts.scheme == "chdb":
            return "argus"
        return unquote(parts.path.lstrip("/")) or "default"

    def masked_dsn(self) -> str:
        parts = urlsplit(self.dsn.get_secret_value())
        if parts.password is None:
            return parts.geturl()
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()


class HealthSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port (tests); services set a fixed one in deployment
    liveness_timeout_s: float = 30.0


class PipelineSettings(BaseModel):
    """Batching, retry and dead-letter policy of a consumer pipeline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_max_messages: int = 5000
    batch_max_seconds: float = 1.0
    retry_initial_backoff_s: float = 0.2
    retry_max_backoff_s: float = 10.0
    dlq_ratio_limit: float = 0.5
    dlq_ratio_window: int = 1000
    dlq_ratio_min_messages: int = 100
    dlq_max_original_bytes: int = Field(
        default=262_144,
        description="Original values above this size are cut to it in a dead letter (the size is kept in a header).",
    )


class ServiceSettings(BaseSettings):
    """Fields every service has; subclasses add their own."""

    model_config = SettingsConfigDict(frozen=True, env_nested_delimiter="__", extra="ignore")

    service_name: str = "argus"
    log_level: str = "INFO"
    log_json: bool = True
    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    health: HealthSettings = HealthSettings()
    pipeline: PipelineSettings = PipelineSettings()

    def masked(self) -> dict[str, Any]:
        """The settings as a dict fit for a log line: secrets stay masked."""
        data = self.model_dump(mode="json")  # SecretStr dumps as '**********'
        data["clickhouse"]["dsn"] = self.clickhouse.masked_dsn()
        return data


def service_settings(service: str, base: type[ServiceSettings] = ServiceSettings) -> type[ServiceSettings]:
    """Build the settings class of ``service`` with env prefix ``ARGUS_<SERVICE>_``."""
    prefix = f"ARGUS_{service.upper().replace('-', '_')}_"
    return type(
        f"{service.title().replace('-', '')}Settings",
        (base,),
        {
            "model_config": SettingsConfigDict(
                env_prefix=prefix, frozen=True, env_nested_delimiter="__", extra="ignore"
            ),
            "__annotations__": {"service_name": str},
            "service_name": service,
        },
    )


class StackSettings(BaseSettings):
    """The local stack (``argus stack up``): Apache Kafka from Maven Central and the
    ClickHouse engine (chdb) behind the ClickHouse HTTP interface, both on loopback."""

    model_config = SettingsConfigDict(env_prefix="ARGUS_STACK_", frozen=True, env_nested_delimiter="__")

    home: Path = Path(".argus")
    host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "512m"
    kafka_brokers: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Brokers of the local Kafka (`argus stack up --brokers 3`): each a KRaft broker and "
        "controller, node i on kafka_port + 2i; topics then get the registry's replication (3, min ISR 2). "
        "An existing stack keeps the count its data was made with.",
    )
    kafka_version: str = "4.4.0"
    kafka_libs: Path | None = Field(
        default=None, description="Where Maven puts Kafka's jars; default <home>/kafka/libs."
    )
    kafka_insecure: bool = Field(
        default=False,
        description="Plaintext listeners, no authentication, no ACLs (`argus stack up --insecure`); "
        "only for a broker whose data was made that way.",
    )
    clickhouse_port: int = 8123
    clickhouse_https: bool = Field(
        default=False,
        description="Serve the local ClickHouse endpoint over HTTPS with a certificate of the stack's CA "
        "(DSNs then carry ca_cert=<home>/tls/ca.pem).",
    )
    clickhouse_database: str = "argus"
    keys_port: int = Field(default=8129, description="The subject key service (crypto-shredding), on loopback.")
    java: str = "java"
    maven: str = "mvn"
    start_timeout_s: float = 90.0

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    def api_keys_file(self) -> Path:
        """The local stack's API keys of the HTTP routes (digests only; 0600)."""
        return Path(self.home).resolve() / "secrets" / "api-keys.json"

    def clickhouse_dsn(self, user: str = "argus_admin", database: str | None = None) -> SecretStr:
        """The DSN of ``user`` on the local ClickHouse endpoint, with the password ``argus
        stack up`` generated into ``<home>/secrets/clickhouse/<user>`` (0600)."""
        path = Path(self.home).resolve() / "secrets" / "clickhouse" / user
        try:
            password = path.read_text().strip()
        except FileNotFoundError:
            raise ValueError(f"no ClickHouse password for {user!r} at {path}: run `argus stack up` first") from None
        db = self.clickhouse_database if database is None else database
        auth = f"{quote(user)}:{quote(password, safe='')}@{self.host}:{self.clickhouse_port}/{db}"
        if self.clickhouse_https:
            ca = Path(self.home).resolve() / "tls" / "ca.pem"
            return SecretStr(f"https://{auth}?ca_cert={quote(str(ca))}")
        return SecretStr(f"http://{auth}")
