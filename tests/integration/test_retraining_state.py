"""The retraining lifecycle outlives the triggers topic's retention: every open trigger is
rebuilt from the compacted state topic after the topic's history is deleted (what
retention does to its oldest segments), and goes on from where it was.

On the real broker: the retraining service opens two triggers (one awaiting approval,
one approved and dispatched), stops; every record of ``argus.retraining.triggers`` is
deleted (DeleteRecords, as retention deletes the oldest segments); a new instance knows
both triggers at the same step, and the waiting one is approved with the CLI and goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from services.common.governance import Signer, ensure_identity
from services.common.kafka import client_kwargs, make_producer
from services.common.registry import get_codec
from services.common.settings import KafkaSettings
from services.common.signing import load_key
from services.retraining.config import load_config
from services.retraining.lifecycle import record
from services.retraining.service import RetrainingService
from services.retraining.settings import RetrainingSettings
from tests.integration.helpers import cli


async def until(predicate, timeout_s: float, what: str, task: asyncio.Task | None = None):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if task is not None and task.done():
            task.result()
            raise AssertionError(f"the service stopped while waiting for {what}")
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def start(k: KafkaSettings) -> tuple[RetrainingService, asyncio.Task]:
    settings = RetrainingSettings(kafka=k, group_id="retraining-" + uuid.uuid4().hex[:6], rollout_enabled=False)
    service = RetrainingService(settings, load_config({"policies": []}))
    task = asyncio.create_task(service.run(asyncio.Event(), health=False), name="retraining")
    await until(lambda: service.caught_up, 60, "the state rebuilt", task)
    return service, task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_open_triggers_survive_the_deletion_of_the_triggers_history(
    kafka_settings: KafkaSettings, governance: Path
) -> None:
    k = kafka_settings
    codec = get_codec("retraining-triggers")
    service_key = Signer("argus-retraining", load_key(governance / "keys" / "argus-retraining.pem"))
    ensure_identity(governance, "state.approver", ["approver"])
    approver = Signer("state.approver", load_key(governance / "keys" / "state.approver.pem"))
    waiting, dispatched = str(uuid.uuid4()), str(uuid.uuid4())

    service, task = await start(k)
    producer = make_producer(k)
    await producer.start()
    try:
        for tid in (waiting, dispatched):  # proposals, as the service writes them
            rec = record(tid, 1, "m", "v1", "quality", "proposed", "metric 3 > 0", "argus-retraining")
            signed = service_key.sign_record(codec.name, codec.version, rec)
            await producer.send_and_wait(k.topic("retraining-triggers"), codec.encode(signed), key=tid.encode())
        await until(
            lambda: (
                all(t.state == "awaiting_approval" for t in service.book.triggers.values())
                and len(service.book.triggers) == 2
            ),
            60,
            "both triggers awaiting approval",
            task,
        )
        approval = service.book.next_record(dispatched, "approved", "state.approver", "go")
        signed = approver.sign_record(codec.name, codec.version, approval)
        await producer.send_and_wait(k.topic("retraining-triggers"), codec.encode(signed), key=dispatched.encode())
        await until(lambda: service.book.triggers[dispatched].state == "dispatched", 60, "the dispatch", task)
    finally:
        await producer.stop()
    await stop(task)

    # retention takes the triggers topic's history: here all of it
    tp = TopicPartition(k.topic("retraining-triggers"), 0)
    admin = AIOKafkaAdminClient(**client_kwargs(k))
    await admin.start()
    try:
        from aiokafka import AIOKafkaConsumer

        probe = AIOKafkaConsumer(**client_kwargs(k))
        await probe.start()
        try:
            end = (await probe.end_offsets([tp]))[tp]
            assert end >= 5  # 2 proposals, 2 awaiting, 1 approval, 1 dispatched
            await admin.delete_records({tp: RecordsToDelete(before_offset=end)})
            assert (await probe.beginning_offsets([tp]))[tp] == end
        finally:
            await probe.stop()
    finally:
        await admin.close()

    service, task = await start(k)
    try:
        book = service.book.triggers
        assert (book[waiting].state, book[waiting].sequence) == ("awaiting_approval", 2)
        assert (book[dispatched].state, book[dispatched].sequence) == ("dispatched", 4)
        # the CLI sees them too, and an approval goes on from where the trigger was
        listed = json.loads(await cli(k, "retrain", "list", "--json"))
        assert {t["trigger_id"]: t["state"] for t in listed} == {waiting: "awaiting_approval", dispatched: "dispatched"}
        await cli(k, "retrain", "approve", waiting[:8], "--by", "state.approver")
        await until(lambda: service.book.triggers[waiting].state == "dispatched", 60, "the approved trigger", task)
        assert service.book.triggers[waiting].sequence == 4
    finally:
        await stop(task)
