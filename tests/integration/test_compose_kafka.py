"""docker-compose.yml's Kafka, run here without Docker: the material
``services.stack.compose_kafka`` generates, and the exact command the ``kafka`` container
runs (with the Maven jars in place of the image's scripts), give a SASL_SSL broker that
`argus acl apply` then fills with the principals, as ``argus-init`` does."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from cryptography import x509

from services.common.kafka import client_kwargs
from services.common.settings import KafkaSettings
from services.stack.compose_kafka import broker_command, generate
from services.stack.kafka_local import free_port
from tests.conftest import REPO

LIBS = REPO / ".argus" / "kafka" / "libs"


async def _can_list_topics(k: KafkaSettings) -> bool:
    admin = AIOKafkaAdminClient(**client_kwargs(k), request_timeout_ms=5000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        await admin.close()


def test_the_compose_broker_authenticates_every_principal_and_nobody_else(tmp_path) -> None:  # noqa: ANN001
    if not any(LIBS.glob("kafka_*.jar")):
        pytest.skip("the Kafka jars are fetched by the session broker (.argus/kafka/libs)")
    out, port = tmp_path / "out", free_port()
    wrote = generate(
        out, "127.0.0.1", broker_dir=str(out / "broker"), data_dir=str(tmp_path / "data"), chown=False, port=port
    )
    assert "broker" in wrote and "argus-ingest" in wrote
    assert generate(out, "127.0.0.1", chown=False) == []  # a second run changes nothing
    for f in ("server.properties", "argus-broker.pem", "admin-password"):
        assert (os.stat(out / "broker" / f).st_mode & 0o077) == 0, f
    assert "PRIVATE KEY" not in (out / "ca" / "ca.pem").read_text()  # what every client gets: no key
    # the key service's certificate: from the same CA, for its compose name, its key private
    assert "keys-tls" in wrote and (os.stat(out / "keys-tls" / "keys.pem").st_mode & 0o077) == 0
    keys_pem = (out / "keys-tls" / "keys.pem").read_bytes()
    cert = x509.load_pem_x509_certificates(keys_pem)[0]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((out / "ca" / "ca.pem").read_bytes()))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) >= {"keys", "localhost"}

    java = f"java -Xmx384m -cp '{LIBS}/*'"
    cmd = (
        broker_command(str(out / "broker"))
        .replace("/opt/kafka/bin/kafka-storage.sh", f"{java} kafka.tools.StorageTool")
        .replace("/opt/kafka/bin/kafka-server-start.sh", f"{java} kafka.Kafka")
    )
    log = open(tmp_path / "broker.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(["bash", "-c", cmd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ca = out / "ca" / "ca.pem"

        def as_(user: str, password_file) -> KafkaSettings:  # noqa: ANN001
            return KafkaSettings(
                bootstrap_servers=f"127.0.0.1:{port}",
                security_protocol="SASL_SSL",
                sasl_mechanism="SCRAM-SHA-512",
                sasl_username=user,
                sasl_password_file=password_file,
                ssl_cafile=ca,
            )

        admin = as_("argus-admin", out / "argus-admin" / "password")
        deadline = time.monotonic() + 90
        while not asyncio.run(_can_list_topics(admin)):
            assert proc.poll() is None, (tmp_path / "broker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the compose broker did not come up"
            time.sleep(1)
        ingest = as_("argus-ingest", out / "argus-ingest" / "password")
        assert not asyncio.run(_can_list_topics(ingest))  # no credential until argus-init made it

        # what argus-init runs (its env: the admin's settings)
        env = {**os.environ, **admin.as_env("ARGUS_CLI_")}
        run = subprocess.run(
            [sys.executable, "-m", "services.cli", "acl", "apply", "--passwords-dir", str(out)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert asyncio.run(_can_list_topics(ingest))
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-password")
        assert not asyncio.run(_can_list_topics(as_("argus-ingest", wrong)))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        log.close()
