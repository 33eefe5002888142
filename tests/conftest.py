"""Shared test options: point the suite at an existing broker or ClickHouse server
(``--kafka-bootstrap``, ``--clickhouse-dsn``); otherwise integration fixtures start
their own real ones (Apache Kafka from Maven Central, the ClickHouse HTTP endpoint
over chdb)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser) -> None:  # noqa: ANN001
    parser.addoption("--kafka-bootstrap", default=None, help="Use this Kafka cluster instead of starting one.")
    parser.addoption(
        "--clickhouse-dsn", default=None, help="Use this ClickHouse (http://user:pw@host:port) instead of starting one."
    )
