"""Ingest throughput and freshness, in one run, on the real broker and ClickHouse endpoint.

- sustained events/s into ClickHouse for one ingest process (decode, PII protection,
  transform, batch, insert, commit), for responses and for requests (the two tables
  with one row per inference), each against a raw pipe in the same run: aiokafka
  consuming the same messages and clickhouse-connect inserting the same rows (built
  beforehand) with no processing at all. Both rates are read from ClickHouse's own
  insert timestamps (``ingested_at``): rows after the first insert over the time from the
  first insert to the last, so neither side pays for being watched (polling ``count()``
  while ingest runs loaded the same two cores);
- freshness: events produced at a fixed rate; p99 of (row inserted) - (event produced),
  i.e. how long until an SRE can query an event.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import Result

REPO = Path(__file__).resolve().parents[1]


def _event(i: int, served_at: int) -> dict:
    return {
        "request_id": str(uuid.uuid4()),
        "response_id": str(uuid.uuid4()),
        "model": "smollm2-135m-instruct",
        "response_model": "SmolLM2.gguf",
        "model_version": "v1" if i % 10 else "v2",
        "tenant": f"t{i % 8}",
        "user": f"u{i % 1000}",
        "output": f"The answer to question {i % 97} is {i % 13}.",
        "finish_reason": "stop",
        "input_tokens": 30 + i % 50,
        "output_tokens": 10 + i % 40,
        "latency_ms": 150.0 + i % 300,
        "time_to_first_token_ms": 50.0 + i % 40,
        "mean_logprob": -0.5 - (i % 10) / 20,
        "status": "ok",
        "shadow": False,
        "served_at": served_at,
    }


def _request(i: int, created_at: int) -> dict:
    return {
        "request_id": str(uuid.uuid4()),
        "created_at": created_at,
        "model": "smollm2-135m-instruct",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": f"What is the capital of country number {i % 97}? Answer in one sentence."},
        ],
        "temperature": 0.7,
        "top_p": None,
        "max_tokens": 64,
        "stop_sequences": [],
        "seed": None,
        "tenant": f"t{i % 8}",
        "user": f"u{i % 1000}",
        "trace_id": None,
        "span_id": None,
        "deadline": None,
        "metadata": {"app": "chat", "experiment": "b" if i % 2 else "a"},
    }


def spawn_ingest(kafka, dsn: str, topics: list[str], group: str) -> subprocess.Popen:  # noqa: ANN001
    """One ingest process (``python -m services.ingest``) on ``topics``, as its own ClickHouse user."""
    import json

    env = {
        **os.environ,
        **kafka.as_env("ARGUS_INGEST_"),
        "ARGUS_INGEST_CLICKHOUSE__DSN": dsn,
        "ARGUS_INGEST_TOPICS": json.dumps(topics),
        "ARGUS_INGEST_LOG_LEVEL": "WARNING",
        "ARGUS_INGEST_GROUP_ID": group,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.ingest"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _unsealed_copy(client, table: str, copy: str, spec) -> None:  # noqa: ANN001
    """``copy``: ``table`` (same engine, order, columns) with every sealed text stored in
    clear under its own name, and no key lookup on insert: the baseline without sealing."""
    from services.common.subject_keys import sealed_columns, texts

    client.command(f"CREATE TABLE {copy} AS {table}")
    client.command(f"ALTER TABLE {copy} MODIFY COLUMN user REMOVE DEFAULT")
    client.command(f"ALTER TABLE {copy} MODIFY COLUMN subject_id REMOVE DEFAULT")
    names = texts(spec.table)
    for c in names:  # the ALIASes that open the texts
        client.command(f"ALTER TABLE {copy} DROP COLUMN {c}")
    for column in sealed_columns(spec.table):  # each text keeps <text>_ct, in clear under its own name
        if column.removesuffix("_ct") in names:
            client.command(f"ALTER TABLE {copy} MODIFY COLUMN {column} REMOVE DEFAULT")
        else:
            client.command(f"ALTER TABLE {copy} DROP COLUMN {column}")
    for c in names:
        client.command(f"ALTER TABLE {copy} DROP COLUMN {c}_in")
        client.command(f"ALTER TABLE {copy} RENAME COLUMN {c}_ct TO {c}")
    client.command(f"ALTER TABLE {copy} DROP COLUMN subject_key_bytes")
    client.command(f"ALTER TABLE {copy} DROP COLUMN subject_key")
    client.command(f"ALTER TABLE {copy} DROP COLUMN user_in")


def _insert_rate(client, table: str) -> float:  # noqa: ANN001 - clickhouse-connect Client
    """Rows per second as ClickHouse stored them: the rows of every insert after the first,
    over the time from the first insert to the last (``ingested_at`` is set per insert)."""
    first, last, total, in_first = client.query(
        f"SELECT min(ingested_at), max(ingested_at), count(), countIf(ingested_at = (SELECT min(ingested_at) FROM {table})) "
        f"FROM {table}"
    ).result_rows[0]
    return (total - in_first) / (last - first).total_seconds()


def _settle(client, timeout_s: float = 60.0) -> None:  # noqa: ANN001 - clickhouse-connect Client
    """Wait until the engine merges nothing (the parts an earlier phase wrote), so each
    timed phase starts on an idle engine: a phase that ran while the one before it was
    still merging paid for both."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not client.query("SELECT count() FROM system.merges WHERE database = 'argus'").result_rows[0][0]:
            break
        time.sleep(0.2)
    time.sleep(1.0)


def run(n: int = 400_000, rate: int = 5000, freshness_s: int = 15) -> list[Result]:
    """The full run on the secure broker (SASL_SSL + ACLs, as the stack runs it), then the
    responses again on a plaintext broker: what TLS and SCRAM cost ingest."""
    secure = _one_broker(True, n, rate, freshness_s, ("inference-responses", "inference-requests"))
    plain = _one_broker(False, n, rate, 0, ("inference-responses",))
    tls = next(r for r in secure if "(responses)" in r.figure and "events/s" in r.figure)
    base = next(r for r in plain if "(responses)" in r.figure and "events/s" in r.figure)
    return [
        *secure,
        Result(
            "ingest",
            "sustained events/s, SASL_SSL (SCRAM-SHA-512) broker (responses)",
            tls.value,
            "the same on a plaintext broker",
            base.value,
            "events/s",
            "ratio >= 0.85",
        ),
    ]


def _one_broker(secure: bool, n: int, rate: int, freshness_s: int, keys_: tuple[str, ...]) -> list[Result]:
    from services.stack.clickhouse_http import spawn
    from services.stack.credentials import clickhouse_password, clickhouse_users_file
    from services.stack.kafka_local import KafkaLocal, free_port

    home = Path(tempfile.mkdtemp(prefix="argus-bench-ingest-"))
    kafka = KafkaLocal(
        home=home, port=free_port(), controller_port=free_port(), libs_dir=REPO / ".argus/kafka/libs", secure=secure
    )
    kafka.start()
    from services.common.settings import StackSettings
    from services.common.subject_keys import KeyServiceRef
    from services.stack.manager import KeyServiceLocal

    stack = StackSettings(home=home, keys_port=free_port())
    keys = KeyServiceLocal(stack)  # the subject keys the sealed tables ask for
    keys.start()
    ref = KeyServiceRef.local(stack)
    ch_port = free_port()
    ch = spawn(home / "ch", ch_port, clickhouse_users_file(home), trust_ca=keys.ca_file)

    def dsn(user: str) -> str:
        return f"http://{user}:{clickhouse_password(home, user).get_secret_value()}@127.0.0.1:{ch_port}/argus"

    try:
        # the admin migrates and counts; ingest runs as its own user, as in the stack
        settings = kafka.client_settings(topic_prefix="bench.")
        return asyncio.run(_run(settings, dsn("argus_admin"), dsn("argus_ingest"), n, rate, freshness_s, keys_, ref))
    finally:
        ch.terminate()
        ch.wait(30)
        keys.stop()
        kafka.stop()


async def _run(
    kafka,
    dsn: str,
    ingest_dsn: str,
    n: int,
    rate: int,
    freshness_s: int,
    keys: tuple[str, ...],
    ref,  # noqa: ANN001 - KeyServiceRef
) -> list[Result]:
    from services.common import migrations
    from services.common.clickhouse import get_client
    from services.common.kafka import ensure_topics

    await ensure_topics(kafka, keys=[k for key in keys for k in (key, key + "-dlq")])
    migrations.apply(get_client(dsn.rsplit("/", 1)[0] + "/default"), "argus", keys=ref)
    client = get_client(dsn)
    out = []
    for key, event, freshness in (("inference-responses", _event, True), ("inference-requests", _request, False)):
        if key in keys:
            out += await _topic(kafka, client, ingest_dsn, key, event, n, rate, freshness_s if freshness else 0)
    return out


async def _topic(kafka, client, dsn: str, key: str, event, n: int, rate: int, freshness_s: int) -> list[Result]:  # noqa: ANN001
    from aiokafka import TopicPartition

    from services.common.kafka import make_consumer, make_producer
    from services.common.pii import PiiPolicy
    from services.common.pipeline import Message
    from services.common.registry import get_codec
    from services.ingest.transforms import Protector, table_for

    spec = table_for(key)
    table = f"argus.{spec.table}"
    raw_table = f"argus.raw_pipe_{spec.table}"  # texts in clear: no sealing at all
    sealed_raw = f"argus.raw_sealed_{spec.table}"  # the same rows sealed by ClickHouse, as ingest's are
    _unsealed_copy(client, table, raw_table, spec)
    client.command(f"CREATE TABLE {sealed_raw} AS {table}")
    codec = get_codec(key)
    topic = kafka.topic(key)

    now = int(time.time() * 1000)
    payloads = [codec.encode(event(i, now)) for i in range(n)]
    producer = make_producer(kafka, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    for i, p in enumerate(payloads):
        await producer.send(topic, p, key=str(i).encode())
    await producer.flush()
    del payloads
    # the raw pipe's rows, built before timing: it does no processing at all
    protector = Protector(PiiPolicy(), {}, b"")
    rows_by_pos: dict[tuple[int, int], tuple] = {}
    consumer = make_consumer(kafka, None)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(3)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    while len(rows_by_pos) < n:
        for tp, msgs in (await consumer.getmany(timeout_ms=500, max_records=20000)).items():
            for m in msgs:
                msg = Message(topic, tp.partition, m.offset, m.key, m.value, m.timestamp, value=codec.decode(m.value))
                rows_by_pos[(tp.partition, m.offset)] = spec.build(msg, protector)

    # raw pipe: consume the same messages, insert the prepared rows, same batch size; into
    # a table with the texts in clear, then into one that seals them (encryption off / on)
    for target, columns in ((raw_table, list(spec.columns)), (sealed_raw, spec.insert_columns)):
        _settle(client)
        await consumer.seek_to_beginning(*tps)
        done = 0
        while done < n:
            batch = []
            for tp, msgs in (await consumer.getmany(timeout_ms=500, max_records=20000)).items():
                batch.extend(rows_by_pos[(tp.partition, m.offset)] for m in msgs)
            if batch:
                await asyncio.to_thread(client.insert, target, batch, column_names=columns)
                done += len(batch)
    raw_rate = _insert_rate(client, raw_table)
    sealed_rate = _insert_rate(client, sealed_raw)
    await consumer.stop()
    del rows_by_pos

    # Argus ingest, one process
    _settle(client)
    # a consumer group of its own per topic: nothing of the run before (its group) to rejoin
    proc = spawn_ingest(kafka, dsn, [key], f"bench-ingest-{key}")
    count = lambda: client.query(f"SELECT count() FROM {table}").result_rows[0][0]  # noqa: E731
    what = "responses" if spec.table == "inference_responses" else "requests"
    try:
        while count() < n:
            await asyncio.sleep(0.5)
        ingest_rate = _insert_rate(client, table)
        out = [
            Result(
                "ingest",
                f"sustained events/s into ClickHouse, one process, texts sealed ({what})",
                ingest_rate,
                "raw pipe (consume + insert prepared rows, texts in clear)",
                raw_rate,
                "events/s",
                ">= 40k/s and ratio >= 0.75",
            ),
            Result(
                "ingest",
                f"raw pipe into sealed tables: encryption on ({what})",
                sealed_rate,
                "the same raw pipe, texts in clear: encryption off",
                raw_rate,
                "events/s",
                "informational: what sealing costs ClickHouse",
                False,
            ),
        ]
        if freshness_s:  # freshness at a fixed rate
            t_start = time.perf_counter()
            sent = 0
            while time.perf_counter() - t_start < freshness_s:
                due = int((time.perf_counter() - t_start) * rate)
                while sent < due:
                    await producer.send(topic, codec.encode(event(sent, int(time.time() * 1000))), key=b"f")
                    sent += 1
                await asyncio.sleep(0.005)
            await producer.flush()
            while count() < n + sent:
                await asyncio.sleep(0.1)
            p50, p99 = client.query(
                f"SELECT quantileExact(0.5)(d), quantileExact(0.99)(d) FROM (SELECT dateDiff('millisecond', served_at, ingested_at) AS d "
                f"FROM {table} ORDER BY served_at DESC LIMIT {sent})"
            ).result_rows[0]
            out.append(
                Result(
                    "ingest",
                    f"freshness p99 at {rate}/s (produced -> queryable)",
                    float(p99),
                    "freshness p50",
                    float(p50),
                    "ms",
                    "p99 <= 1000 ms",
                    False,
                )
            )
        return out
    finally:
        proc.terminate()
        proc.wait(60)
        await producer.stop()
