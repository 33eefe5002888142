"""``argus produce``, ``consume``, ``loadgen`` and ``sql``: data in and out."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from services.cli.base import app, clickhouse_for, console, err
from services.cli.base import fail as _fail
from services.cli.base import settings as _settings


@app.command("produce")
def produce(
    topic: str = typer.Argument(..., help="Registry key, e.g. inference-requests."),
    file: Optional[Path] = typer.Argument(None, help="JSON lines; stdin when omitted."),
    key_field: Optional[str] = typer.Option(None, help="Record field used as the Kafka key."),
) -> None:
    """Encode JSON records with the topic's schema (Confluent wire format) and produce them.
    A record that does not match the schema is reported with its line number and not sent."""
    from services.common.codec import SerializationError, from_json
    from services.common.kafka import make_producer
    from services.common.registry import default_registry

    s = _settings()
    reg = default_registry()
    spec = reg.topic(topic)
    codec = reg.codec(topic)
    schema = reg.schema_json(spec.schema, spec.version)
    lines = file.open() if file else sys.stdin

    async def run() -> tuple[int, int]:
        producer = make_producer(s.kafka)
        await producer.start()
        sent = bad = 0
        try:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = from_json(schema, json.loads(line))
                    value = codec.encode(record)
                except (json.JSONDecodeError, SerializationError) as exc:
                    err.print(f"line {n}: {exc}")
                    bad += 1
                    continue
                key = str(record.get(key_field)).encode() if key_field and record.get(key_field) is not None else None
                await producer.send(s.kafka.topic_prefix + spec.name, value, key=key)
                sent += 1
            await producer.flush()
        finally:
            await producer.stop()
        return sent, bad

    sent, bad = asyncio.run(run())
    console.print(
        f"produced {sent} records to {s.kafka.topic_prefix + spec.name}" + (f", {bad} rejected" if bad else ""),
        highlight=False,
    )
    if bad:
        raise typer.Exit(1)


async def _follow(topic: str, from_beginning: bool, max_messages: int, idle_timeout: float):  # noqa: ANN202
    """Yield ``(partition, offset, record or None, error or None)`` from a registry topic,
    without a consumer group (nothing is committed)."""
    from aiokafka import TopicPartition

    from services.common.codec import SerializationError
    from services.common.kafka import make_consumer
    from services.common.registry import default_registry

    s = _settings()
    reg = default_registry()
    name = s.kafka.topic_prefix + reg.topic(topic).name
    codec = reg.codec(topic)
    consumer = make_consumer(s.kafka, None)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(name) or set()
        if not parts:
            await consumer._client.force_metadata_update()  # first metadata fetch for this topic
            parts = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(parts)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        seen = 0
        idle = 0.0
        while not max_messages or seen < max_messages:
            batch = await consumer.getmany(timeout_ms=500)
            if not batch:
                idle += 0.5
                if idle_timeout and idle >= idle_timeout:
                    return
                continue
            idle = 0.0
            for tp, msgs in batch.items():
                for m in msgs:
                    try:
                        yield tp.partition, m.offset, codec.decode(m.value), None
                    except SerializationError as exc:
                        yield tp.partition, m.offset, None, str(exc)
                    seen += 1
                    if max_messages and seen >= max_messages:
                        return
    finally:
        await consumer.stop()


@app.command("consume")
def consume(
    topic: str = typer.Argument(..., help="Registry key, e.g. inference-responses (or: responses, requests)."),
    from_beginning: bool = typer.Option(False, "--from-beginning"),
    max_messages: int = typer.Option(0, "--max", help="Stop after this many (0: follow)."),
    idle_timeout: float = typer.Option(0.0, help="Stop after this many seconds without a message (0: never)."),
) -> None:
    """Print decoded records as JSON lines (no consumer group: nothing is committed)."""
    from services.common.codec import to_json

    topic = {"requests": "inference-requests", "responses": "inference-responses"}.get(topic, topic)

    async def run() -> None:
        async for partition, offset, record, error in _follow(topic, from_beginning, max_messages, idle_timeout):
            out = {"partition": partition, "offset": offset}
            out.update({"value": to_json(record)} if error is None else {"error": error})
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
            sys.stdout.flush()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@app.command("loadgen")
def loadgen(
    rate: float = typer.Option(5.0, help="Requests per second."),
    duration: float = typer.Option(60.0, help="Seconds to run."),
    mix: str = typer.Option("general=0.7,support=0.3", help="Topic mix, e.g. general=0.5,support=0.3,legal=0.2"),
    drift: str = typer.Option("none", help="none | length | language | topic"),
    drift_at: float = typer.Option(30.0, help="Seconds after the start when the drift begins."),
    max_tokens: int = typer.Option(32),
    seed: int = typer.Option(7),
) -> None:
    """Produce a realistic request stream, optionally with a drift injected at a known time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from services.sdk.loadgen import TOPICS, LoadProfile, run_load
    from services.sdk.producer import ArgusProducer

    try:
        pairs = tuple((k, float(v)) for k, v in (item.split("=") for item in mix.split(",")))
    except ValueError:
        _fail(f"--mix must look like general=0.7,support=0.3, got {mix!r}")
        return
    unknown = [k for k, _ in pairs if k not in TOPICS]
    if unknown or drift not in ("none", "length", "language", "topic"):
        _fail(f"unknown topics {unknown} (known: {sorted(TOPICS)}) or drift {drift!r}")
    profile = LoadProfile(
        rate_per_s=rate,
        duration_s=duration,
        mix=pairs,
        drift=drift,
        drift_at_s=drift_at,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        seed=seed,
    )
    s = _settings()

    async def run() -> dict[str, int]:
        with Progress(
            TextColumn("loadgen"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[phase]}"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("send", total=int(rate * duration), phase="baseline")
            async with ArgusProducer(s.kafka) as producer:
                return await run_load(
                    producer, profile, lambda n, phase: progress.update(task, completed=n, phase=phase)
                )

    counts = asyncio.run(run())
    console.print(
        f"sent {sum(counts.values())} requests: {counts['baseline']} baseline, {counts['drift']} after the drift"
    )


# -- sql -----------------------------------------------------------------------------
@app.command("sql")
def sql(
    query: str = typer.Argument(..., help="SQL to run against the configured ClickHouse DSN."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    user: str = typer.Option(
        "argus_sre", "--user", "-u", help="the local stack's user to run as (argus_sre reads; argus_admin for DDL)"
    ),
) -> None:
    """Run a query against ClickHouse (ARGUS_CLI_CLICKHOUSE__DSN; else the local stack, as
    the read-only ``argus_sre`` unless ``--user`` says otherwise)."""
    from clickhouse_connect.driver.exceptions import ClickHouseError as CHError

    from services.common.clickhouse import get_client
    from services.common.codec import to_json

    ch = clickhouse_for(user)
    try:
        result = get_client(ch).query(query)
    except CHError as exc:
        _fail(str(exc).split("(for url")[0].strip())
        return
    names = list(result.column_names)
    rows = result.result_rows
    if fmt == "json":
        for row in rows:
            sys.stdout.write(json.dumps(to_json(dict(zip(names, row))), default=str, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(names)
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        table = Table(show_lines=False)
        for n in names:
            table.add_column(n)
        for row in rows:
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        console.print(table)
        err.print(f"{len(rows)} rows")
