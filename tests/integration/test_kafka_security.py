"""Kafka security on the real broker (SASL_SSL, SCRAM-SHA-512, the StandardAuthorizer with
``allow.everyone.if.no.acl.found=false``), as ``argus stack up`` runs it.

The refusal matrix is generated from the registry: for every principal of
``schemas/principals.yaml`` and every topic, writing and reading succeed exactly where
``services.common.kafka_acl.plan`` allows them and fail with Kafka's authorization error
everywhere else. Then the ways in without a valid identity: no credentials, a wrong
password, a plaintext client, TLS without SASL, and a client that does not trust the CA."""

from __future__ import annotations

import asyncio
import ssl
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import SecretStr

from services.common import kafka_acl
from services.common.kafka import client_kwargs, ensure_topics
from services.common.registry import default_registry
from services.stack.credentials import secret

REG = default_registry()


@pytest.fixture
def secured(kafka_local, kafka_settings):  # noqa: ANN001, ANN201 - (KafkaLocal, prefix, acls)
    if kafka_local is None:
        pytest.skip("needs the session's own secure broker (not --kafka-bootstrap)")
    principals = kafka_acl.load_principals()
    kafka_acl.upsert_users(
        kafka_settings, {p: secret(kafka_local.home, f"kafka/{p}").get_secret_value() for p in principals}
    )
    acls = kafka_acl.plan(kafka_settings.topic_prefix)
    kafka_acl.apply(kafka_settings, acls)
    return kafka_local, kafka_settings.topic_prefix, acls


def _writes(settings, topics: list[str]) -> dict[str, bool]:  # noqa: ANN001
    """Produce one record to each topic with librdkafka (another client than the services'):
    True where the broker stored it, False where it answered TOPIC_AUTHORIZATION_FAILED."""
    from confluent_kafka import KafkaError as RdKafkaError
    from confluent_kafka import Producer

    out: dict[str, bool] = {}

    def delivered(err, msg) -> None:  # noqa: ANN001
        if err is not None and err.code() != RdKafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise AssertionError(f"{msg.topic()}: unexpected {err}")
        out[msg.topic()] = err is None

    producer = Producer({**kafka_acl.admin_config(settings), "enable.idempotence": True, "message.timeout.ms": 20000})
    for topic in topics:
        producer.produce(topic, b"probe", key=b"k", on_delivery=delivered)
    assert producer.flush(30) == 0
    return out


def _reads(settings, group: str, topic: str) -> bool:  # noqa: ANN001
    """Fetch from ``topic`` as a member of ``group``: False on an authorization error."""
    import time

    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as RdPartition

    conf = {**kafka_acl.admin_config(settings), "group.id": group, "enable.auto.commit": False}
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None and "AUTHORIZATION_FAILED" in meta.error.name():
            return False  # not even allowed to know the topic
        partitions = next(t.partitions for t in REG.topics.values() if topic.endswith(t.name))
        consumer.assign([RdPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + 15
        seen = []
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if "AUTHORIZATION_FAILED" in msg.error().name():
                    return False
                seen.append(msg.error().name())
                continue
            return True
        raise AssertionError(f"{settings.sasl_username}: no record and no refusal from {topic} within 15 s: {seen}")
    finally:
        consumer.close()


async def test_every_principal_can_do_exactly_what_the_registry_plans(secured) -> None:  # noqa: ANN001
    kafka, prefix, acls = secured
    topics = [prefix + t.name for t in REG.topics.values()]
    admin = kafka.client_settings(topic_prefix=prefix)
    assert all((await asyncio.to_thread(_writes, admin, topics)).values())  # one record in each to read back
    principals = kafka_acl.load_principals()
    wrong = []
    for name, principal in principals.items():
        settings = kafka.client_settings(name, topic_prefix=prefix)
        for topic, ok in (await asyncio.to_thread(_writes, settings, topics)).items():
            if ok != kafka_acl.allowed(acls, name, topic, "Write"):
                wrong.append(f"{name} write {topic}: {'allowed' if ok else 'refused'}, not as planned")
        # a member of its own groups (a principal without groups can join none: it reads nothing)
        group = (principal.groups[0] if principal.groups else "argus-none") + ".probe"
        for topic in topics:
            ok = await asyncio.to_thread(_reads, settings, group, topic)
            if ok != kafka_acl.allowed(acls, name, topic, "Read"):
                wrong.append(f"{name} read {topic}: {'allowed' if ok else 'refused'}, not as planned")
    assert not wrong, "\n".join(wrong)
    # the matrix is not trivially all-yes or all-no
    planned = [(p, t) for p in principals for t in topics if kafka_acl.allowed(acls, p, t, "Write")]
    assert 0 < len(planned) < len(topics) * len(principals) / 2


async def test_a_consumer_group_outside_the_principals_prefix_is_refused(secured) -> None:  # noqa: ANN001
    from aiokafka.errors import GroupAuthorizationFailedError

    kafka, prefix, _ = secured
    settings = kafka.client_settings("argus-ingest", topic_prefix=prefix)
    topic = settings.topic("feedback")
    for group, ok in ((f"argus-ingest.{uuid.uuid4().hex[:6]}", True), (f"argus-drift.{uuid.uuid4().hex[:6]}", False)):
        consumer = AIOKafkaConsumer(topic, **client_kwargs(settings), group_id=group, enable_auto_commit=False)
        try:
            await consumer.start()
            await consumer.getmany(timeout_ms=3000)
            assert ok, group
        except GroupAuthorizationFailedError:
            assert not ok, group
        finally:
            await consumer.stop()


async def test_the_faust_internal_topics_belong_to_their_app_alone(secured) -> None:  # noqa: ANN001
    kafka, prefix, acls = secured
    changelog = f"{prefix}argus-drift-monitors-changelog"
    assert kafka_acl.allowed(acls, "argus-drift", changelog, "Write")
    for other in ("argus-alerting", "argus-ingest", "argus-operator", "argus-producer"):
        assert not kafka_acl.allowed(acls, other, changelog, "Write")
        assert not kafka_acl.allowed(acls, other, changelog, "Read")
    await ensure_topics(kafka.client_settings(topic_prefix=prefix), keys=["feedback"])
    settings = kafka.client_settings("argus-alerting", topic_prefix=prefix)
    producer = AIOKafkaProducer(**client_kwargs(settings), enable_idempotence=True)
    await producer.start()
    try:
        with pytest.raises(KafkaError):  # not its topic: refused (or unknown, never written)
            await asyncio.wait_for(producer.send_and_wait(changelog, b"forged state"), 20)
    finally:
        await producer.stop()


@pytest.mark.parametrize("case", ["no credentials", "wrong password", "plaintext", "tls without sasl", "untrusted CA"])
async def test_clients_without_a_valid_identity_are_refused(secured, case: str) -> None:  # noqa: ANN001
    kafka, prefix, _ = secured
    good = kafka.client_settings("argus-producer", topic_prefix=prefix)
    if case == "no credentials":
        settings = good.model_copy(update={"sasl_password_file": None, "sasl_password": None})
    elif case == "wrong password":
        settings = good.model_copy(update={"sasl_password_file": None, "sasl_password": SecretStr("not-the-password")})
    elif case == "plaintext":
        settings = good.model_copy(update={"security_protocol": "PLAINTEXT"})
    elif case == "tls without sasl":
        settings = good.model_copy(update={"security_protocol": "SSL"})
    else:
        settings = good
    if case == "no credentials":
        with pytest.raises(ValueError, match="SASL needs"):
            client_kwargs(settings)
        kw = {**client_kwargs(good), "sasl_plain_password": ""}
    else:
        kw = client_kwargs(settings)
    if case == "untrusted CA":
        kw["ssl_context"] = ssl.create_default_context()  # the system's CAs, not the stack's
    producer = AIOKafkaProducer(**kw, request_timeout_ms=5000, metadata_max_age_ms=5000)
    try:
        with pytest.raises((KafkaConnectionError, KafkaError, asyncio.TimeoutError, ssl.SSLError, OSError)):
            await asyncio.wait_for(producer.start(), 20)
            await asyncio.wait_for(producer.send_and_wait(good.topic("inference-requests"), b"x"), 10)
    finally:
        await producer.stop()


async def test_topics_get_the_registry_replication_and_a_one_broker_cluster_refuses_three(kafka_settings) -> None:  # noqa: ANN001
    """The broker's own view of what ``ensure_topics`` created: min.insync.replicas from the
    registry's plan (1 on the one-broker stack), and ``registry`` replication (3 copies)
    refused by a cluster of one rather than quietly created with fewer."""
    from aiokafka.errors import InvalidReplicationFactorError
    from confluent_kafka.admin import AdminClient, ConfigResource

    topic = kafka_settings.topic_prefix + REG.topic("feedback").name
    admin = AdminClient(kafka_acl.admin_config(kafka_settings))
    meta = admin.list_topics(topic, timeout=20).topics[topic]
    assert {len(p.replicas) for p in meta.partitions.values()} == {1}
    (future,) = admin.describe_configs([ConfigResource("TOPIC", topic)]).values()
    configs = {k: v.value for k, v in future.result(timeout=20).items()}
    assert configs["min.insync.replicas"] == "1"
    assert configs["retention.ms"] == REG.topic("feedback").config["retention.ms"]
    production = kafka_settings.model_copy(
        update={"replication": "registry", "topic_prefix": "repl-" + uuid.uuid4().hex[:6] + "."}
    )
    with pytest.raises(InvalidReplicationFactorError):
        await ensure_topics(production, keys=["feedback"])
