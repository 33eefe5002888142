"""Session-scoped real infrastructure for integration tests.

- Kafka: ``--kafka-bootstrap`` if given, else Apache Kafka 4.4 (KRaft) from Maven Central
  started in a temporary directory on free loopback ports.
- ClickHouse: ``--clickhouse-dsn`` if given, else the ClickHouse HTTP endpoint over the
  chdb engine started as its own process on a free port.

Each test gets its own topics (a unique topic prefix) and its own database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import SecretStr

from services.common.kafka import ensure_topics
from services.common.settings import ClickHouseSettings, KafkaSettings
from services.stack.kafka_local import KafkaLocal, free_port
from tests.conftest import REPO
from tests.integration.helpers import start_clickhouse_endpoint, start_key_service

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items) -> None:  # noqa: ANN001
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_local(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaLocal | None]:
    """The session's broker: SASL_SSL (SCRAM-SHA-512) with the StandardAuthorizer and no
    ACL but the super user's, exactly as `argus stack up` runs it (None with --kafka-bootstrap)."""
    if request.config.getoption("--kafka-bootstrap"):
        yield None
        return
    kafka = KafkaLocal(
        home=tmp_path_factory.mktemp("kafka-home"),
        port=free_port(),
        controller_port=free_port(),
        libs_dir=REPO / ".argus" / "kafka" / "libs",
    )
    kafka.start(timeout_s=120)
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest, kafka_local: KafkaLocal | None) -> str:
    return request.config.getoption("--kafka-bootstrap") or kafka_local.bootstrap


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` set in this process (and the services and CLI runs it spawns), then restored."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def key_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The session's subject key service. Every migration run (in the tests and in the
    services they spawn) points the key dictionaries at it through the settings."""
    home = tmp_path_factory.mktemp("keys-home")
    keys, ref = start_key_service(home, free_port())
    secrets = home.resolve() / "secrets" / "privacy"
    env = {
        "ARGUS_PRIVACY_KEYS_URL": ref.url,
        "ARGUS_PRIVACY_KEYS_DICTIONARY_TOKEN_FILE": str(secrets / "dictionary-token"),
        "ARGUS_PRIVACY_KEYS_ADMIN_TOKEN_FILE": str(secrets / "admin-token"),
        "ARGUS_PRIVACY_KEYS_CA_FILE": str(ref.ca_file),  # HTTPS, a certificate from its stack CA
    }
    try:
        with environment(env):
            yield ref
    finally:
        keys.stop()


@pytest.fixture(scope="session", autouse=True)
def governance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's trust file and keys directory, as `argus stack up` makes them: the
    retraining service's key (role service). Tests add their people with
    `argus identity init`; every service and CLI run finds both through the settings."""
    from services.common.governance import ensure_identity

    home = tmp_path_factory.mktemp("governance")
    ensure_identity(home, "argus-retraining", ["service"])
    env = {
        "ARGUS_GOVERNANCE_TRUST_FILE": str(home / "trust.yaml"),
        "ARGUS_GOVERNANCE_KEYS_DIR": str(home / "keys"),
        # the tests serve the packaged (unsigned) SmolLM2 as v1, as the local stack does; signed versions are
        # verified all the same, and the refusal of unsigned ones is tested with this set to false
        "ARGUS_INFERENCE_ALLOW_UNSIGNED_MODELS": "true",
        # the tests' alerting configs are unsigned; test_alerting's main test signs its rules and refuses others
        "ARGUS_ALERTING_ALLOW_UNSIGNED_RULES": "true",
        "ARGUS_RETRAINING_ALLOW_UNSIGNED_POLICIES": "true",
    }
    with environment(env):
        yield home


@pytest.fixture(scope="session")
def clickhouse_users(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, key_service: Any
) -> Iterator[dict]:
    """Base DSN (no database) of every user: the admin ``argus_admin`` and each role. The
    engine trusts the key service's CA (and no other) for the key dictionaries' HTTPS."""
    given = request.config.getoption("--clickhouse-dsn")
    if given:
        from services.common.clickhouse_access import ADMIN

        yield {ADMIN: given.rstrip("/")}
        return
    proc, urls = start_clickhouse_endpoint(
        tmp_path_factory.mktemp("clickhouse-home"), free_port(), trust_ca=key_service.ca_file
    )
    try:
        yield urls
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="session")
def clickhouse_url(clickhouse_users: dict) -> str:
    """The admin's base DSN without a database."""
    from services.common.clickhouse_access import ADMIN

    return clickhouse_users[ADMIN]


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, kafka_local: KafkaLocal | None, topic_prefix: str) -> KafkaSettings:
    """Settings with a unique topic prefix; every registry topic created under it."""
    if kafka_local is None:
        settings = KafkaSettings(
            bootstrap_servers=kafka_bootstrap,
            topic_prefix=topic_prefix,
            client_id="argus-tests",
            replication="single-broker",
        )
    else:  # the stack's super user: tests set up topics and traffic; ACLs are tested on their own
        settings = kafka_local.client_settings(topic_prefix=topic_prefix, client_id="argus-tests")
    asyncio.run(ensure_topics(settings))
    return settings


@pytest.fixture
def ch_database(clickhouse_url: str) -> Iterator[str]:
    from services.common.clickhouse import get_client

    name = f"test_{uuid.uuid4().hex[:10]}"
    admin = get_client(clickhouse_url + "/default")
    admin.command(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


@pytest.fixture
def clickhouse_settings(clickhouse_url: str, ch_database: str) -> ClickHouseSettings:
    """The admin's DSN on the test's database (to create, inspect and drop)."""
    return ClickHouseSettings(dsn=SecretStr(f"{clickhouse_url}/{ch_database}"))


@pytest.fixture
def clickhouse_as(clickhouse_users: dict, ch_database: str):  # noqa: ANN201 - user -> ClickHouseSettings
    """``clickhouse_as("argus_ingest")``: that user's settings on the test's database."""

    def settings_for(user: str) -> ClickHouseSettings:
        return ClickHouseSettings(dsn=SecretStr(f"{clickhouse_users[user]}/{ch_database}"))

    return settings_for


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[dict]:
    """One real Ray cluster with Serve for the session (2 CPUs, loopback HTTP)."""
    os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1.0")
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield {"http_port": port, "address": ray.get_runtime_context().gcs_address}
    finally:
        serve.shutdown()
        ray.shutdown()
