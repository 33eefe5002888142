"""No secret reaches a log line: registered values and credential-shaped text are masked
in structlog events and in standard-library records (aiokafka, faust)."""

from __future__ import annotations

import json
import logging
import sys

from pydantic import SecretStr

from services.common.logging import MASK, REDACTOR, configure_logging, get_logger, register_secrets
from services.common.settings import ClickHouseSettings, KafkaSettings, ServiceSettings


def test_secrets_of_the_settings_and_credential_shapes_are_masked(tmp_path, capsys) -> None:  # noqa: ANN001
    pw_file = tmp_path / "kafka-password"
    pw_file.write_text("file-held-kafka-secret\n")
    settings = ServiceSettings(
        kafka=KafkaSettings(sasl_password_file=pw_file, sasl_username="argus-ingest"),
        clickhouse=ClickHouseSettings(dsn=SecretStr("http://argus_ingest:dsn-pass-123@ch:8123/argus")),
    )
    register_secrets(settings)
    configure_logging("INFO", json=True)
    try:
        log = get_logger("test")
        log.info(
            "connect", error="auth failed for file-held-kafka-secret", url="http://argus_ingest:dsn-pass-123@ch:8123/"
        )
        log.info("jaas", config='ScramLoginModule required username="u" password="not-registered-at-all";')
        out = capsys.readouterr().err
    finally:  # later tests must not write into this test's captured (then closed) stream
        import structlog

        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    for secret in ("file-held-kafka-secret", "dsn-pass-123", "not-registered-at-all", "stdlib-held-value"):
        assert secret not in out, secret
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert any(MASK in ln.get("error", "") for ln in lines)
    assert REDACTOR.text("nothing secret here") == "nothing secret here"


def test_standard_library_records_are_masked_too() -> None:
    import io

    from services.common.logging import _RecordFilter

    REDACTOR.register("registered-stdlib-secret")
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(_RecordFilter(REDACTOR))
    logger = logging.getLogger("aiokafka.test-redaction")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("sasl_plain_password=%s rejected; also %s", "shape-masked-value", "registered-stdlib-secret")
    text = buf.getvalue()
    assert "shape-masked-value" not in text and "registered-stdlib-secret" not in text and MASK in text


def test_personal_data_in_log_fields_is_redacted_and_names_are_kept(capsys) -> None:  # noqa: ANN001
    configure_logging("INFO", json=True)
    try:
        log = get_logger("test")
        log.warning(
            "ingest.dead_letter",
            topic="argus.inference.requests",
            offset=12345678901,
            reason="cannot map: user bob@example.com paid with 4111 1111 1111 1111",
            detail={"iban": "DE89 3704 0044 0532 0130 00"},
        )
        out = capsys.readouterr().err
    finally:
        import structlog

        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    (line,) = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    for clear in ("bob@example.com", "4111 1111", "DE89"):
        assert clear not in out, clear
    assert line["reason"] == "cannot map: user [EMAIL] paid with [CARD]" and line["detail"] == {"iban": "[IBAN]"}
    assert line["topic"] == "argus.inference.requests" and line["offset"] == 12345678901
