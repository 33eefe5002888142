"""Tenant isolation on the real secure broker (SASL_SSL, SCRAM, StandardAuthorizer) and
real Ray Serve: a tenant's principal can publish only on its own request topic and read
only its own answers; the gateway takes the tenant from the topic, never the payload; a
producer written with another Kafka client (librdkafka) works from the configuration
``argus tenants add`` prints."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from services.common import kafka_acl, tenants
from services.common.kafka import make_consumer, make_producer
from services.common.registry import get_codec, get_topic
from services.inference.app import deploy
from services.inference.bridge import InferenceBridge
from services.inference.gateway import TenantGateway
from services.inference.settings import BridgeSettings, EngineSettings, GatewaySettings, InferenceSettings
from services.sdk.client import ArgusClient
from services.sdk.producer import ArgusProducer
from services.stack.credentials import secret
from tests.integration.helpers import cli

REQ = get_codec("inference-requests")
RESP = get_codec("inference-responses")


@pytest.fixture
def platform(kafka_local, kafka_settings):  # noqa: ANN001, ANN201 - the platform's principals and ACLs
    if kafka_local is None:
        pytest.skip("needs the session's own secure broker (not --kafka-bootstrap)")
    principals = kafka_acl.load_principals()
    kafka_acl.upsert_users(
        kafka_settings, {p: secret(kafka_local.home, f"kafka/{p}").get_secret_value() for p in principals}
    )
    kafka_acl.apply(kafka_settings, kafka_acl.plan(kafka_settings.topic_prefix))
    return kafka_local


def _tenant(kafka_local, admin, name: str):  # noqa: ANN001, ANN202
    return asyncio.run(_add_tenant(kafka_local, admin, name))


async def _add_tenant(kafka_local, admin, name: str):  # noqa: ANN001, ANN202 - (KafkaSettings, printed config)
    """Provision ``name`` as `argus tenants add` does; the tenant's own client settings."""
    password = f"pw-{uuid.uuid4().hex}"
    await tenants.provision(admin, name, password)
    config = tenants.client_config(
        name, admin.bootstrap_servers, password, str(kafka_local.tls / "ca.pem"), admin.topic_prefix
    )
    settings = admin.model_copy(
        update={
            "sasl_username": tenants.principal(name),
            "sasl_password": SecretStr(password),
            "sasl_password_file": None,
            "client_id": f"tenant-{name}",
        }
    )
    return settings, config


def _rd_produce(conf: dict, topic: str, value: bytes, key: bytes) -> str | None:
    """One record with librdkafka; None when stored, else the error's name."""
    from confluent_kafka import Producer

    result: dict[str, str | None] = {}

    def delivered(err, msg) -> None:  # noqa: ANN001
        result["err"] = None if err is None else err.name()

    p = Producer({**conf, "message.timeout.ms": 20000})
    p.produce(topic, value, key=key, on_delivery=delivered)
    p.flush(30)
    return result.get("err", "NOT_DELIVERED")


def _rd_read(conf: dict, topic: str, group: str, want: int, timeout_s: float = 30.0) -> tuple[list, str | None]:
    """Records read by a librdkafka consumer in ``group``; or the error that stopped it."""
    from confluent_kafka import Consumer

    conf = {k: v for k, v in conf.items() if k not in ("enable.idempotence", "acks")}
    c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out, error = [], None
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < want and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                if m.error().name() in ("TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED"):
                    error = m.error().name()
                    break
                continue
            out.append(m)
    finally:
        c.close()
    return out, error


def _request(name: str, tenant: str) -> tuple[str, bytes]:
    rid = str(uuid.uuid4())
    record = {
        "request_id": rid,
        "created_at": int(time.time() * 1000),
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": f"Say hello to {name}."}],
        "tenant": tenant,
        "max_tokens": 4,
    }
    return rid, REQ.encode(record)


def test_a_tenant_reaches_only_its_own_topics(platform, kafka_settings) -> None:  # noqa: ANN001
    prefix = kafka_settings.topic_prefix
    _, acme = _tenant(platform, kafka_settings, "acme")
    _, bravo = _tenant(platform, kafka_settings, "bravo")
    conf = dict(acme["librdkafka"])
    _, value = _request("x", "acme")

    # writes: its own request topic only
    assert _rd_produce(conf, acme["request_topic"], value, b"k") is None
    for topic in (bravo["request_topic"], kafka_settings.topic("inference-requests"), acme["response_topic"]):
        assert _rd_produce(conf, topic, value, b"k") == "TOPIC_AUTHORIZATION_FAILED", topic
    # reads: its own reply topic (in a group under its prefix) only
    for t in (acme, bravo):
        assert _rd_produce(kafka_acl.admin_config(kafka_settings), t["response_topic"], value, b"k") is None
    got, err = _rd_read(conf, acme["response_topic"], acme["group_prefix"] + "readers", 1)
    assert err is None and len(got) == 1
    for topic in (bravo["response_topic"], kafka_settings.topic("inference-responses"), bravo["request_topic"]):
        _, err = _rd_read(conf, topic, acme["group_prefix"] + "readers", 1, timeout_s=20)
        assert err == "TOPIC_AUTHORIZATION_FAILED", topic
    # a group outside its prefix is refused
    _, err = _rd_read(conf, acme["response_topic"], f"{prefix}argus-ingest", 1, timeout_s=20)
    assert err == "GROUP_AUTHORIZATION_FAILED"

    # revoked: the credential is gone, nothing authenticates any more
    n, existed = asyncio.run(tenants.revoke(kafka_settings, "acme"))
    assert n == len(tenants.acls("acme", prefix)) and existed
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    with pytest.raises(KafkaException) as exc:
        AdminClient({**conf, "socket.timeout.ms": 5000}).list_topics(timeout=10)
    assert "Authentication failed" in str(exc.value) or "SASL" in str(exc.value) or "_TRANSPORT" in str(exc.value)


async def _run(*services, until, timeout_s: float = 180.0) -> None:  # noqa: ANN001, ANN002
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in services]
    deadline = time.monotonic() + timeout_s
    try:
        while not await until():
            for t in tasks:
                if t.done():
                    t.result()
            assert time.monotonic() < deadline, "not finished in time"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_tenants_get_their_own_answers_through_the_gateway(ray_serve, platform, kafka_settings) -> None:  # noqa: ANN001
    prefix = kafka_settings.topic_prefix
    # acme is added the way an operator does it, and uses exactly what `argus tenants add` printed
    printed = await cli(kafka_settings, "tenants", "add", "acme", "--format", "librdkafka")
    conf = dict(line.split("=", 1) for line in printed.splitlines() if "=" in line and not line.startswith("#"))
    assert conf["sasl.username"] == "tenant-acme" and conf["security.protocol"] == "SASL_SSL"
    acme = {
        "request_topic": tenants.request_topic("acme", prefix),
        "response_topic": tenants.response_topic("acme", prefix),
        "group_prefix": tenants.group_prefix("acme", prefix),
    }
    acme_kafka = kafka_settings.model_copy(
        update={
            "sasl_username": conf["sasl.username"],
            "sasl_password": SecretStr(conf["sasl.password"]),
            "sasl_password_file": None,
            "ssl_cafile": conf["ssl.ca.location"],
        }
    )
    _, bravo = await _add_tenant(platform, kafka_settings, "bravo")
    inference = platform.client_settings("argus-inference", topic_prefix=prefix, client_id="argus-inference")
    tag = uuid.uuid4().hex[:6]
    s = InferenceSettings(
        kafka=inference,
        engine=EngineSettings(max_tokens=4, max_batch_size=2),
        bridge=BridgeSettings(group_id=f"argus-inference-bridge-{tag}", max_in_flight=4),
        gateway=GatewaySettings(group_id=f"argus-inference-gateway-{tag}", discovery_interval_s=1.0),
    )
    router = deploy(s)
    bridge, gateway = InferenceBridge(s, router), TenantGateway(s)

    # a librdkafka producer from the printed configuration: one honest request, one that
    # claims to be bravo's (published on acme's topic)
    honest, value = _request("rd", "acme")
    assert _rd_produce(conf, acme["request_topic"], value, honest.encode()) is None
    forged, value = _request("forged", "bravo")
    assert _rd_produce(conf, acme["request_topic"], value, forged.encode()) is None
    unnamed, value = _request("unnamed", "")
    assert _rd_produce(conf, acme["request_topic"], value, unnamed.encode()) is None

    answers: dict[str, dict] = {}

    async def complete() -> None:
        async with ArgusClient(acme_kafka, "acme", timeout_s=120) as client:
            r = await client.complete([{"role": "user", "content": "What is Kafka?"}], max_tokens=4)
            answers[str(r["request_id"])] = r

    async def done() -> bool:
        return bool(answers) and bridge.answered >= 3 and gateway.forwarded >= 3

    client_task = asyncio.create_task(complete())
    await _run(bridge, gateway, until=done)
    await client_task
    (sdk_answer,) = answers.values()
    assert sdk_answer["tenant"] == "acme" and sdk_answer["status"] == "ok"

    # acme reads exactly its answers with librdkafka: the honest and unnamed requests and
    # the SDK's, never the forged one
    got, err = _rd_read(conf, acme["response_topic"], acme["group_prefix"] + "app", 3, timeout_s=30)
    assert err is None
    replies = {str(RESP.decode(m.value())["request_id"]): RESP.decode(m.value()) for m in got}
    assert set(replies) == {honest, unnamed, str(sdk_answer["request_id"])}
    assert all(r["tenant"] == "acme" for r in replies.values())

    # the forged one was dead-lettered with the reason, and nothing reached bravo
    dlq = "inference-requests-dlq"
    dead = await _read_all(kafka_settings, kafka_settings.topic(dlq), partitions=get_topic(dlq).partitions)
    mismatch = [d for d in dead if d["error_type"] == "InvalidMessage.TenantMismatch"]
    assert len(mismatch) == 1 and "bravo" in mismatch[0]["reason"]
    assert mismatch[0]["original_topic"] == acme["request_topic"]
    assert await _read_all(kafka_settings, bravo["response_topic"], RESP) == []
    # the platform saw every answered request on the shared topics, as acme's
    shared = await _read_all(kafka_settings, kafka_settings.topic("inference-requests"), REQ)
    assert {str(r["request_id"]) for r in shared} == set(replies)
    assert {r["tenant"] for r in shared} == {"acme"}


async def test_the_shared_topic_cannot_redirect_answers_to_another_tenant(ray_serve, platform, kafka_settings) -> None:  # noqa: ANN001
    """The reply header is honoured only when it names the request's own tenant."""
    prefix = kafka_settings.topic_prefix
    _, acme = await _add_tenant(platform, kafka_settings, "acme")
    inference = platform.client_settings("argus-inference", topic_prefix=prefix, client_id="argus-inference")
    s = InferenceSettings(
        kafka=inference,
        engine=EngineSettings(max_tokens=4, max_batch_size=2),
        bridge=BridgeSettings(group_id=f"argus-inference-bridge-{uuid.uuid4().hex[:6]}", max_in_flight=4),
        gateway=GatewaySettings(enabled=False),
    )
    router = deploy(s)
    bridge = InferenceBridge(s, router)
    async with ArgusProducer(kafka_settings) as p:
        rec = p.build_request([{"role": "user", "content": "hi"}], tenant="bravo", max_tokens=2)
    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            kafka_settings.topic("inference-requests"),
            REQ.encode(rec),
            key=str(rec["request_id"]).encode(),
            headers=[(tenants.REPLY_HEADER, b"acme")],
        )
    finally:
        await producer.stop()

    async def done() -> bool:
        return bridge.answered >= 1

    await _run(bridge, until=done)
    assert await _read_all(kafka_settings, acme["response_topic"], RESP) == []


async def _read_all(kafka, topic: str, codec=None, partitions: int = 3) -> list[dict]:  # noqa: ANN001
    """Everything on ``topic`` now (its registry codec and partitions)."""
    codec = codec or get_codec("inference-requests-dlq")
    consumer = make_consumer(kafka, None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[dict] = []
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]] and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(codec.decode(m.value) for m in msgs)
        return out
    except KafkaError:
        raise
    finally:
        await consumer.stop()
