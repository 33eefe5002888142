"""A storm of invalid messages stops nothing, and a replay after the fix stores each once.

A producer upgraded to a newer request schema (v2, registered nowhere the consumers
look yet) publishes 500 requests in a row, then 500 valid v1 requests, while 1,000
feedback items flow on their own topic. The bridge and ingest dead-letter the 500 (both
read the topic), flag the storm, and answer and log every valid message; nobody exits.
Then the consumers are upgraded to contracts that know v2, and ``argus dlq replay``
publishes each of the 500 once (twice run: the second publishes nothing): each is
answered and stored once.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from services.common import migrations
from services.common.clickhouse import get_client
from services.common.codec import from_json
from services.common.kafka import make_producer
from services.common.registry import SCHEMAS_DIR, SchemaRegistry, default_registry
from services.common.settings import ClickHouseSettings, KafkaSettings, PipelineSettings
from services.inference.app import deploy
from services.inference.bridge import InferenceBridge
from services.inference.settings import BridgeSettings, EngineSettings, InferenceSettings
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings
from tests.integration.helpers import cli

NEW_ID = 9901


def newer_contracts(tmp: Path) -> SchemaRegistry:
    """The shipped contracts plus ``inference_request.v2`` (one more optional field)."""
    root = tmp / "schemas"
    shutil.copytree(SCHEMAS_DIR, root)
    v1 = json.loads((root / "avro" / "inference_request.v1.avsc").read_text())
    v1["fields"].append({"name": "priority", "type": ["null", "string"], "default": None})
    (root / "avro" / "inference_request.v2.avsc").write_text(json.dumps(v1))
    ids = yaml.safe_load((root / "avro" / "ids.yaml").read_text())
    ids["inference_request.v2"] = NEW_ID
    (root / "avro" / "ids.yaml").write_text(yaml.safe_dump(ids))
    return SchemaRegistry(root)


def request(i: int, deadline_ms: int, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "created_at": int(time.time() * 1000),
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}],
        "tenant": "acme",
        "max_tokens": 2,
        "deadline": deadline_ms,
        **extra,
    }


async def until(check: Any, timeout_s: float, what: str, tasks: list[asyncio.Task]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for t in tasks:
            assert not t.done(), (
                f"{t.get_name()} exited while waiting for {what}: {t.exception() if not t.cancelled() else ''}"
            )
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def test_a_storm_of_invalid_requests_stops_nothing_and_a_replay_stores_each_once(
    ray_serve: dict,
    kafka_settings: KafkaSettings,
    clickhouse_settings: ClickHouseSettings,
    clickhouse_as,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    k, db = kafka_settings, clickhouse_settings.database
    ch = get_client(clickhouse_settings)
    newer = newer_contracts(tmp_path)
    v1_schema = default_registry().schema_json("inference_request", 1)
    v2_schema = newer.schema_json("inference_request", 2)
    v1, v2 = default_registry().codec("inference-requests"), newer.codec("inference-requests", version=2)
    assert v2.schema_id == NEW_ID

    policy = PipelineSettings(batch_max_seconds=0.3, dlq_ratio_window=200, dlq_ratio_min_messages=50)
    inference = InferenceSettings(
        kafka=k,
        pipeline=policy,
        engine=EngineSettings(max_tokens=2, max_batch_size=2),
        bridge=BridgeSettings(group_id="bridge-" + uuid.uuid4().hex[:6], max_in_flight=16),
    )
    ingest_settings = IngestSettings(
        kafka=k, clickhouse=clickhouse_as("argus_ingest"), pipeline=policy, group_id="ingest-" + uuid.uuid4().hex[:6]
    )
    router = await asyncio.to_thread(deploy, inference)

    def start(
        registry: SchemaRegistry | None,
    ) -> tuple[asyncio.Event, list[asyncio.Task], InferenceBridge, IngestService]:
        stop = asyncio.Event()
        bridge = InferenceBridge(inference, router, registry=registry)
        ingest = IngestService(ingest_settings, registry=registry)
        tasks = [
            asyncio.create_task(bridge.run(stop), name="bridge"),
            asyncio.create_task(ingest.run(stop, health=False), name="ingest"),
        ]
        return stop, tasks, bridge, ingest

    await asyncio.to_thread(migrations.apply, get_client(clickhouse_settings, database="default"), db)
    stop, tasks, bridge, ingest = start(None)
    try:
        now = int(time.time() * 1000)
        # 500 from a producer ahead of the consumers, then 500 valid ones (5 answered by the
        # model, the rest past their deadline: answered at once), and 1,000 feedback items
        invalid = [request(i, now - 1, priority="high") for i in range(500)]
        valid = [request(i, now + 600_000 if i < 5 else now - 1) for i in range(500)]
        feedback = [
            {
                "feedback_id": str(uuid.uuid4()),
                "request_id": str(uuid.uuid4()),
                "tenant": "acme",
                "kind": "thumbs",
                "score": 1.0,
                "source": "user",
                "created_at": now,
            }
            for _ in range(1000)
        ]
        producer = make_producer(k)
        await producer.start()
        try:
            fb_codec = default_registry().codec("feedback")
            fb_schema = default_registry().schema_json("feedback", 1)
            for r in invalid:
                await producer.send(
                    k.topic("inference-requests"), v2.encode(from_json(v2_schema, r)), key=r["request_id"].encode()
                )
            for r in valid:
                await producer.send(
                    k.topic("inference-requests"), v1.encode(from_json(v1_schema, r)), key=r["request_id"].encode()
                )
            for f in feedback:
                await producer.send(
                    k.topic("feedback"), fb_codec.encode(from_json(fb_schema, f)), key=f["request_id"].encode()
                )
            await producer.flush()
        finally:
            await producer.stop()

        valid_ids = [r["request_id"] for r in valid]
        invalid_ids = [r["request_id"] for r in invalid]

        def count(table: str, ids: list[str], column: str = "request_id") -> int:
            listed = ", ".join(f"'{uuid.UUID(i)}'" for i in ids)  # our own uuids, checked by UUID()
            return ch.query(f"SELECT count() FROM {db}.{table} WHERE toString({column}) IN ({listed})").result_rows[0][
                0
            ]

        def everything_valid_logged_and_answered() -> bool:
            return (
                count("inference_requests", valid_ids) == 500
                and count("inference_responses", valid_ids) == 500
                and ch.query(f"SELECT count() FROM {db}.feedback").result_rows[0][0] == 1000
            )

        await until(everything_valid_logged_and_answered, 180, "every valid request logged and answered", tasks)

        def storm_dead_lettered() -> bool:
            rows = ch.query(
                f"SELECT service, uniqExact(original_offset, original_partition) FROM {db}.dead_letters "
                "WHERE reason LIKE 'unknown schema id%' GROUP BY service"
            ).result_rows
            return dict(rows) == {"ingest": 500, "inference-bridge": 500}

        await until(storm_dead_lettered, 60, "the 500 in the dead-letter table from both consumers", tasks)
        assert count("inference_requests", invalid_ids) == 0 and count("inference_responses", invalid_ids) == 0
        requests_topic = k.topic("inference-requests")
        assert ingest.metrics.value("argus_dead_letter_storms_total", topic=requests_topic) >= 1
        assert bridge.metrics.value("argus_dead_letter_storms_total", topic=requests_topic) >= 1
        listed = await cli(k, "dlq", "list", "inference-requests", "--json", "--limit", "0")
        assert len(listed.splitlines()) == 1000
        assert all("unknown schema id 9901" in json.loads(line)["reason"] for line in listed.splitlines())
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    # the fix: both consumers now know v2; each dead-lettered original is replayed once
    stop, tasks, bridge, ingest = start(newer)
    try:
        out = await cli(k, "dlq", "replay", "inference-requests", "--reason", "unknown schema id")
        assert "replayed 500 messages" in out, out
        again = await cli(k, "dlq", "replay", "inference-requests", "--reason", "unknown schema id")
        assert "replayed 0 messages" in again and "500 already replayed" in again, again

        def replayed_stored_once() -> bool:
            return count("inference_requests", invalid_ids) == 500 and count("inference_responses", invalid_ids) == 500

        await until(replayed_stored_once, 180, "the replayed requests logged and answered", tasks)
        await asyncio.sleep(2)  # anything stored twice would have arrived by now
        assert count("inference_requests", invalid_ids) == 500 and count("inference_responses", invalid_ids) == 500
        assert count("inference_requests", valid_ids) == 500
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        ch.close()
