from __future__ import annotations

import pydantic
import pytest

from services.common.settings import ClickHouseSettings, ServiceSettings, service_settings


def test_env_prefix_and_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    Ingest = service_settings("ingest")
    monkeypatch.setenv("ARGUS_INGEST_KAFKA__BOOTSTRAP_SERVERS", "broker-1:9092")
    monkeypatch.setenv("ARGUS_INGEST_KAFKA__TOPIC_PREFIX", "staging.")
    monkeypatch.setenv("ARGUS_DRIFT_KAFKA__BOOTSTRAP_SERVERS", "other:9092")  # another service's: ignored
    s = Ingest()
    assert s.service_name == "ingest"
    assert s.kafka.bootstrap_servers == "broker-1:9092"
    assert s.kafka.topic("inference-requests") == "staging.argus.inference.requests"


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARGUS_INGEST_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("ARGUS_INGEST_CLICKHOUSE__DSN", "http://writer:s3cret@ch:8123/argus")
    s = service_settings("ingest")()
    assert "hunter2" not in repr(s) and "s3cret" not in repr(s)
    masked = s.masked()
    assert "s3cret" not in str(masked) and "hunter2" not in str(masked)
    assert masked["clickhouse"]["dsn"] == "http://writer:***@ch:8123/argus"
    assert s.kafka.sasl_password.get_secret_value() == "hunter2"
    assert s.clickhouse.database == "argus"


def test_settings_are_frozen() -> None:
    s = ServiceSettings()
    with pytest.raises(pydantic.ValidationError):
        s.log_level = "DEBUG"  # type: ignore[misc]


def test_listeners_default_to_loopback() -> None:
    s = ServiceSettings()
    assert s.health.host == "127.0.0.1"
    assert s.kafka.bootstrap_servers.startswith("127.0.0.1")


def test_bad_dsn_scheme_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="scheme"):
        ClickHouseSettings(dsn="mysql://x@y/z")


def test_credentials_can_come_from_files(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from services.common.settings import service_settings

    dsn = tmp_path / "dsn"
    dsn.write_text("http://argus_ingest:from-a-file@ch:8123/argus\n")
    pw = tmp_path / "kafka"
    pw.write_text("kafka-from-a-file\n")
    monkeypatch.setenv("ARGUS_FILETEST_CLICKHOUSE__DSN_FILE", str(dsn))
    monkeypatch.setenv("ARGUS_FILETEST_KAFKA__SASL_PASSWORD_FILE", str(pw))
    s = service_settings("filetest")()
    assert s.clickhouse.dsn.get_secret_value().endswith("from-a-file@ch:8123/argus")
    assert s.kafka.password() == "kafka-from-a-file"
    assert "from-a-file" not in str(s.masked())
