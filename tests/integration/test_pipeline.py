"""The consumer pipeline against the real broker and ClickHouse: good messages land as
rows, malformed ones land in the dead-letter topic with the reason, the consumer goes
on, offsets are committed only after the insert, a ClickHouse outage is retried."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import TopicPartition

from services.common.clickhouse import get_client
from services.common.codec import wire_header
from services.common.kafka import make_consumer, make_producer
from services.common.pipeline import InvalidMessage, Message, Pipeline, TransientError
from services.common.registry import default_registry, get_codec
from services.common.settings import ClickHouseSettings, KafkaSettings, PipelineSettings

REG = default_registry()


def feedback_row(msg: Message) -> list:
    """The transform under test: a pure function of one message."""
    v = msg.value
    if v["kind"] not in ("thumbs", "rating", "label", "correction"):
        raise InvalidMessage(f"unknown feedback kind {v['kind']!r}", "InvalidMessage.UnknownKind")
    return [str(v["feedback_id"]), str(v["request_id"]), v["tenant"], v["kind"], v["score"], msg.partition, msg.offset]


def clickhouse_sink(settings: ClickHouseSettings):
    client = get_client(settings)
    client.command(
        "CREATE TABLE IF NOT EXISTS fb (feedback_id String, request_id String, tenant String, kind String, "
        "score Nullable(Float64), partition UInt32, offset UInt64) ENGINE = ReplacingMergeTree ORDER BY feedback_id"
    )

    async def sink(rows: list[list]) -> None:
        from clickhouse_connect.driver.exceptions import OperationalError

        try:
            await asyncio.to_thread(
                client.insert,
                "fb",
                rows,
                column_names=["feedback_id", "request_id", "tenant", "kind", "score", "partition", "offset"],
            )
        except OperationalError as exc:  # connection refused / reset: the store is down, retry
            raise TransientError(str(exc)) from exc

    return client, sink


def feedback(i: int, kind: str = "thumbs") -> dict:
    return {
        "feedback_id": str(uuid.UUID(int=i + 1)),
        "request_id": str(uuid.uuid4()),
        "tenant": f"t{i % 3}",
        "kind": kind,
        "score": float(i % 2),
        "source": "user",
        "created_at": 1764000000000 + i,
    }


async def produce(kafka: KafkaSettings, values: list[bytes]) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        for i, v in enumerate(values):
            await producer.send(kafka.topic("feedback"), v, key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def read_all(kafka: KafkaSettings, key: str, timeout_s: float = 10.0) -> list:
    consumer = make_consumer(kafka, None)
    await consumer.start()
    try:
        name = kafka.topic(key)
        tps = [TopicPartition(name, p) for p in range(REG.topic(key).partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while sum(ends.values()) > len(out) and asyncio.get_running_loop().time() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(msgs)
        return out
    finally:
        await consumer.stop()


async def run_until(pipeline: Pipeline, cond, timeout_s: float = 60.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while not await cond():
            if task.done():
                task.result()
            assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task


async def test_malformed_messages_are_dead_lettered_and_the_consumer_goes_on(
    kafka_settings: KafkaSettings, clickhouse_settings: ClickHouseSettings
) -> None:
    codec = get_codec("feedback")
    good = [codec.encode(feedback(i)) for i in range(40)]
    bad = [
        b'{"kind": "thumbs"}',  # JSON, not Avro
        wire_header(4242) + b"\x00\x01",  # unknown schema id
        codec.encode(feedback(900, kind="smile")),  # valid Avro, rejected by the transform
        wire_header(codec.schema_id) + b"\xff\xff\xff",  # truncated body
    ]
    await produce(kafka_settings, good[:20] + bad + good[20:])

    client, sink = clickhouse_sink(clickhouse_settings)
    policy = PipelineSettings(batch_max_messages=16, batch_max_seconds=0.3, dlq_ratio_min_messages=1000)
    pipeline = Pipeline(
        kafka=kafka_settings,
        policy=policy,
        topic_key="feedback",
        group_id="g-" + uuid.uuid4().hex[:6],
        service="test",
        transform=feedback_row,
        sink=sink,
    )

    async def all_rows() -> bool:
        return client.query("SELECT count() FROM fb").result_rows[0][0] == 40 and sum(pipeline.committed.values()) == 44

    await run_until(pipeline, all_rows)
    assert client.query("SELECT count(), uniqExact(feedback_id) FROM fb FINAL").result_rows == [(40, 40)]

    dead = await read_all(kafka_settings, "feedback-dlq")
    assert len(dead) == 4
    dlq_codec = get_codec("feedback-dlq")
    letters = [dlq_codec.decode(m.value) for m in dead]
    reasons = sorted(letter["reason"] for letter in letters)
    assert any("magic byte" in r for r in reasons)
    assert any("unknown schema id 4242" in r for r in reasons)
    assert any("unknown feedback kind 'smile'" in r for r in reasons)
    assert sorted(letter["original_value"] for letter in letters) == sorted(bad)
    for m, letter in zip(dead, letters):
        h = dict(m.headers)
        assert h["argus.original_topic"].decode() == kafka_settings.topic("feedback")
        assert int(h["argus.original_offset"]) == letter["original_offset"]
        assert h["argus.reason"].decode() == letter["reason"][:1000]

    # the group's committed offsets cover every message: a restart re-reads nothing
    consumer = make_consumer(kafka_settings, pipeline.group_id)
    await consumer.start()
    try:
        name = kafka_settings.topic("feedback")
        tps = [TopicPartition(name, p) for p in range(3)]
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            assert (await consumer.committed(tp) or 0) == ends[tp]
    finally:
        await consumer.stop()


async def test_a_consumer_fed_garbage_flags_a_storm_and_keeps_going(
    kafka_settings: KafkaSettings, clickhouse_settings: ClickHouseSettings
) -> None:
    """Mostly garbage: every message is dead-lettered, the valid ones after it are still
    stored, the storm is on the metric, and the consumer never stops."""
    codec = get_codec("feedback")
    await produce(
        kafka_settings, [b"garbage %d" % i for i in range(30)] + [codec.encode(feedback(i)) for i in range(6)]
    )
    client, sink = clickhouse_sink(clickhouse_settings)
    client.command("TRUNCATE TABLE fb")
    policy = PipelineSettings(
        batch_max_messages=100, batch_max_seconds=0.2, dlq_ratio_limit=0.5, dlq_ratio_min_messages=5
    )
    pipeline = Pipeline(
        kafka=kafka_settings,
        policy=policy,
        topic_key="feedback",
        group_id="g-" + uuid.uuid4().hex[:6],
        service="test",
        transform=feedback_row,
        sink=sink,
    )

    async def done() -> bool:
        return client.query("SELECT count() FROM fb").result_rows[0][0] == 6 and sum(pipeline.committed.values()) == 36

    await run_until(pipeline, done, timeout_s=60)
    assert len(await read_all(kafka_settings, "feedback-dlq")) == 30
    storms = pipeline.metrics.value("argus_dead_letter_storms_total", topic=kafka_settings.topic("feedback"))
    assert storms >= 1


async def test_clickhouse_outage_is_retried_and_nothing_is_lost(
    kafka_settings: KafkaSettings, tmp_path, clickhouse_url: str
) -> None:
    """A private ClickHouse endpoint is stopped mid-stream and started again."""
    import subprocess

    from pydantic import SecretStr

    from services.stack.kafka_local import free_port
    from tests.integration.helpers import start_clickhouse_endpoint

    port = free_port()
    procs: list[subprocess.Popen] = []
    urls: dict[str, str] = {}

    def start() -> subprocess.Popen:
        proc, started = start_clickhouse_endpoint(tmp_path / "ch", port)
        procs.append(proc)
        urls.update(started)
        return proc

    proc = start()
    settings = ClickHouseSettings(
        dsn=SecretStr(f"{urls['argus_admin']}/default"), connect_timeout_s=1, send_receive_timeout_s=5
    )
    client, sink = clickhouse_sink(settings)
    codec = get_codec("feedback")
    await produce(kafka_settings, [codec.encode(feedback(i)) for i in range(30)])
    policy = PipelineSettings(
        batch_max_messages=10, batch_max_seconds=0.2, retry_initial_backoff_s=0.1, retry_max_backoff_s=0.5
    )
    pipeline = Pipeline(
        kafka=kafka_settings,
        policy=policy,
        topic_key="feedback",
        group_id="g-" + uuid.uuid4().hex[:6],
        service="test",
        transform=feedback_row,
        sink=sink,
    )
    proc.terminate()
    proc.wait(30)

    async def restart_later() -> None:
        await asyncio.sleep(3)
        assert not pipeline.sink_healthy, "the pipeline should have noticed the outage"
        assert sum(pipeline.committed.values()) == 0, "nothing may be committed while the store is down"
        await asyncio.to_thread(start)

    restarter = asyncio.create_task(restart_later())

    async def done() -> bool:
        return restarter.done() and sum(pipeline.committed.values()) == 30

    try:
        await run_until(pipeline, done, timeout_s=90)
        await restarter
        assert client.query("SELECT count(), uniqExact(feedback_id) FROM fb FINAL").result_rows == [(30, 30)]
        assert pipeline.metrics.value("argus_sink_retries_total", sink=pipeline.topic) >= 1
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)


async def test_health_endpoint_reports_liveness_readiness_lag_and_metrics(
    kafka_settings: KafkaSettings, clickhouse_settings: ClickHouseSettings
) -> None:
    import httpx

    from services.common.health import HealthServer
    from services.common.pipeline import pipeline_readiness
    from services.common.settings import HealthSettings

    codec = get_codec("feedback")
    await produce(kafka_settings, [codec.encode(feedback(i)) for i in range(12)] + [b"junk"])
    client, sink = clickhouse_sink(clickhouse_settings)
    pipeline = Pipeline(
        kafka=kafka_settings,
        policy=PipelineSettings(batch_max_messages=5, batch_max_seconds=0.2),
        topic_key="feedback",
        group_id="g-" + uuid.uuid4().hex[:6],
        service="test",
        transform=feedback_row,
        sink=sink,
    )
    health = HealthServer(
        HealthSettings(port=0, liveness_timeout_s=2),
        pipeline.metrics,
        lambda: pipeline.last_progress,
        lambda: pipeline_readiness(pipeline),
    )
    port = await health.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            r = await http.get(base + "/readyz")
            assert r.status_code == 503 and r.json()["detail"] == "not started"

            async def drained() -> bool:
                assert (await http.get(base + "/healthz")).status_code == 200
                r = await http.get(base + "/readyz")
                body = r.json()
                return (
                    r.status_code == 200
                    and body["assigned_partitions"]
                    and sum(body["lag"].values()) == 0
                    and sum(body["committed"].values()) == 13
                )

            await run_until(pipeline, drained)
            metrics = (await http.get(base + "/metrics")).text
            assert 'argus_messages_consumed_total{service="test",topic="' in metrics
            assert "argus_messages_dead_lettered_total" in metrics and "argus_commits_total" in metrics
            # the loop has stopped: liveness turns red once the timeout passes
            await asyncio.sleep(2.2)
            assert (await http.get(base + "/healthz")).status_code == 503
    finally:
        await health.stop()
