"""The retraining lifecycle outlives the triggers topic's retention, and every step is in
the hash-chained audit trail, where tampering is found.

On the real broker and ClickHouse engine: the retraining service opens two triggers
(one awaiting approval, one approved and dispatched), stops; every record of
``argus.retraining.triggers`` is deleted (DeleteRecords, as retention deletes the oldest
segments); a new instance knows both triggers at the same step, and the waiting one is
approved with the CLI and goes on. Ingest stores the audit trail; `argus audit verify`
passes, then reports an edited, a deleted, an inserted, a reordered event and a
truncated tail, each at its first bad event.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from services.common import migrations
from services.common.clickhouse import check_database, get_client
from services.common.governance import Signer, ensure_identity
from services.common.kafka import client_kwargs, make_producer
from services.common.registry import get_codec
from services.common.settings import ClickHouseSettings, KafkaSettings
from services.common.signing import key_id, load_key
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings
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
    settings = RetrainingSettings(
        kafka=k, group_id="retraining-" + uuid.uuid4().hex[:6], rollout_enabled=False, audit_checkpoint_s=1.0
    )
    service = RetrainingService(settings, load_config({"policies": []}))
    task = asyncio.create_task(service.run(asyncio.Event(), health=False), name="retraining")
    await until(lambda: service.caught_up, 60, "the state rebuilt", task)
    return service, task


async def topic_end(k: KafkaSettings, key: str) -> int:
    from aiokafka import AIOKafkaConsumer

    tp = TopicPartition(k.topic(key), 0)
    consumer = AIOKafkaConsumer(**client_kwargs(k))
    await consumer.start()
    try:
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


async def silence(k: KafkaSettings, author: str, comment: str) -> None:
    """`argus alerts silence` as ``author``: a signed silence and its audit submission."""
    await cli(k, "alerts", "silence", "-m", 'model="m"', "--duration", "1h", "--author", author, "--comment", comment)


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_open_triggers_survive_the_deletion_of_the_triggers_history_and_the_trail_shows_tampering(
    kafka_settings: KafkaSettings,
    clickhouse_settings: ClickHouseSettings,
    clickhouse_as,  # noqa: ANN001
    governance: Path,
) -> None:
    k, db = kafka_settings, check_database(clickhouse_settings.database)  # a name every statement below uses
    admin = get_client(clickhouse_settings)
    await asyncio.to_thread(migrations.apply, get_client(clickhouse_settings, database="default"), db)
    ingest = IngestService(
        IngestSettings(kafka=k, clickhouse=clickhouse_as("argus_ingest"), group_id="ingest-" + uuid.uuid4().hex[:6])
    )
    stop_ingest = asyncio.Event()
    ingesting = asyncio.create_task(ingest.run(stop_ingest, health=False), name="ingest")
    try:
        await lifecycle_survives(k, governance)
        await trail_is_intact_and_tampering_is_found(k, db, admin, clickhouse_settings, governance)
    finally:
        stop_ingest.set()
        await asyncio.gather(ingesting, return_exceptions=True)
        admin.close()


async def lifecycle_survives(k: KafkaSettings, governance: Path) -> None:
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
    kadmin = AIOKafkaAdminClient(**client_kwargs(k))
    await kadmin.start()
    try:
        from aiokafka import AIOKafkaConsumer

        probe = AIOKafkaConsumer(**client_kwargs(k))
        await probe.start()
        try:
            end = (await probe.end_offsets([tp]))[tp]
            assert end >= 5  # 2 proposals, 2 awaiting, 1 approval, 1 dispatched
            await kadmin.delete_records({tp: RecordsToDelete(before_offset=end)})
            assert (await probe.beginning_offsets([tp]))[tp] == end
        finally:
            await probe.stop()
    finally:
        await kadmin.close()

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
        # a key trusted and then revoked in the trust file: both changes are in the trail
        leaver = ensure_identity(governance, "state.leaver", ["approver"])
        await until(lambda: leaver in service.trust_recorded, 30, "the new key recorded", task)
        await cli(k, "identity", "revoke", leaver)
        await until(lambda: service.trust_recorded[leaver]["revoked_at"], 30, "the revocation recorded", task)
        # a person's silence is submitted, signed, to the trail; the service witnesses it into its chain
        await silence(k, "state.approver", "maintenance")
        await until(lambda: any(a.startswith("submitted:") for a in service.audited), 60, "the silence witnessed", task)
        # a submission signed by a revoked key is refused (dead-lettered, and audited as a refusal)
        await silence(k, "state.leaver", "after leaving")  # its key file is still there, revoked in the trust file
        await until(
            lambda: any(a.startswith("refused:audit:") for a in service.audited), 60, "the revoked key refused", task
        )
    finally:
        await stop(task)


async def trail_is_intact_and_tampering_is_found(  # noqa: ANN001
    k: KafkaSettings, db: str, admin, ch: ClickHouseSettings, governance: Path
) -> None:
    env = {"ARGUS_CLI_CLICKHOUSE__DSN": ch.dsn.get_secret_value()}

    def trail() -> list[tuple]:
        return admin.query(
            f"SELECT chain_seq, action, actor, subject, writer FROM {db}.audit_log ORDER BY chain_seq"
        ).result_rows

    # both triggers' every step, the approvals by the person who signed them, and a checkpoint
    written = await topic_end(k, "audit")  # the service has stopped: its chain is complete on the topic
    rows = await until(lambda: len(trail()) == written and trail(), 60, "the whole trail in ClickHouse")
    steps = [(r[1], r[2]) for r in rows if r[1] != "checkpoint"]
    assert any(r[1] == "checkpoint" for r in rows), rows
    assert steps.count(("trigger.proposed", "argus-retraining")) == 2, steps
    assert steps.count(("trigger.awaiting_approval", "argus-retraining")) == 2
    assert steps.count(("trigger.approved", "state.approver")) == 2
    assert steps.count(("trigger.dispatched", "argus-retraining")) == 2
    keys = {(r[1], r[3]) for r in rows if r[1].startswith("key.")}
    approver = load_key(governance / "keys" / "state.approver.pem").public_key()
    assert ("key.trusted", key_id(approver)) in keys, keys  # the keys trusted at the first start
    leaver = key_id(load_key(governance / "keys" / "state.leaver.pem").public_key())
    assert {("key.trusted", leaver), ("key.revoked", leaver)} <= keys, keys
    chained = [r for r in rows if r[4] == "argus-retraining"]
    assert [r[0] for r in chained] == list(range(1, len(chained) + 1))
    # the people's submissions (seq 0): the silence, witnessed; the revoked key's, refused
    assert sorted((r[4], r[1]) for r in rows if r[0] == 0) == [
        ("state.approver", "alert.silenced"),
        ("state.leaver", "alert.silenced"),
    ]
    assert ("alert.silenced", "state.approver") in steps
    assert ("governance.refused", "state.leaver") in steps
    out = await cli(k, "audit", "verify", "--lag-s", "0", env=env)
    assert "clickhouse" in out and "kafka" in out and "intact" in out, out
    log = await cli(k, "audit", "log", env=env)
    assert "trigger.approved" in log and "state.approver" in log

    n = len(chained)
    admin.command(f"CREATE TABLE {db}.audit_backup AS {db}.audit_log")
    admin.command(f"INSERT INTO {db}.audit_backup SELECT * FROM {db}.audit_log")
    cols = (
        "event_id, writer, chain_seq, prev_hash, occurred_at, action, actor, subject, detail, hash, signature, key_id"
    )
    tampering = [
        ("edited", 3, [f"ALTER TABLE {db}.audit_log UPDATE actor = 'mallory' WHERE chain_seq = 3"]),
        ("missing", 2, [f"ALTER TABLE {db}.audit_log DELETE WHERE chain_seq = 2"]),
        (
            "edited",
            n + 1,
            [
                f"INSERT INTO {db}.audit_log ({cols}, _topic, _partition, _offset) SELECT event_id, writer, {n + 1}, "
                f"prev_hash, occurred_at, 'trigger.approved', 'mallory', subject, detail, hash, signature, key_id, "
                f"_topic, _partition, 999999 FROM {db}.audit_backup WHERE chain_seq = 4"
            ],
        ),
        (
            "edited",  # #3's event at #2: its hash covers its position
            2,
            [
                f"ALTER TABLE {db}.audit_log DELETE WHERE chain_seq IN (2, 3)",
                f"INSERT INTO {db}.audit_log SELECT * REPLACE (if(chain_seq = 2, 3, 2) AS chain_seq) "
                f"FROM {db}.audit_backup WHERE chain_seq IN (2, 3)",
            ],
        ),
        ("truncated", n - 1, [f"ALTER TABLE {db}.audit_log DELETE WHERE chain_seq >= {n - 1}"]),
        # a person's witnessed submission deleted: the witness names it
        (
            "missing",
            0,
            [f"ALTER TABLE {db}.audit_log DELETE WHERE chain_seq = 0 AND writer = 'state.approver'"],
        ),
    ]
    for kind, seq, statements in tampering:
        for sql in statements:
            admin.command(sql, settings={"mutations_sync": 2})
        out = await cli(k, "audit", "verify", "--lag-s", "0", env=env, expect_rc=1)
        first = next(line for line in out.splitlines() if "first bad event" in line)
        assert f"#{seq} " in first and f": {kind}" in first, (kind, seq, out)
        admin.command(f"TRUNCATE TABLE {db}.audit_log")
        admin.command(f"INSERT INTO {db}.audit_log SELECT * FROM {db}.audit_backup")
    assert "intact" in await cli(k, "audit", "verify", "--lag-s", "0", env=env)
