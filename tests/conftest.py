"""Shared test options: point the suite at an existing broker or ClickHouse server
(``--kafka-bootstrap``, ``--clickhouse-dsn``); otherwise integration fixtures start
their own real ones (Apache Kafka from Maven Central, the ClickHouse HTTP endpoint
over chdb)."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Ray with token authentication, as the services run it: the session's token in a 0600
# file, inherited by every process the tests start. Ray reads the mode when it is
# imported, so this runs before any test module can import it.
_RAY_TOKEN = Path(tempfile.mkdtemp(prefix="argus-ray-auth-")) / "auth-token"
_RAY_TOKEN.write_text(secrets.token_urlsafe(32))
_RAY_TOKEN.chmod(0o600)
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(_RAY_TOKEN)


def pytest_addoption(parser) -> None:  # noqa: ANN001
    parser.addoption("--kafka-bootstrap", default=None, help="Use this Kafka cluster instead of starting one.")
    parser.addoption(
        "--clickhouse-dsn", default=None, help="Use this ClickHouse (http://user:pw@host:port) instead of starting one."
    )
