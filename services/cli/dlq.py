"""``argus dlq list | replay``: dead letters, read from their topics, and re-published to
the topic they came from once the cause is fixed (a consumer upgraded to a schema
registered since, a bug fixed in a transform).

Replay is *once per original message*: every consumer of a topic dead-letters the same
invalid message (ingest and the bridge both read ``inference-requests``), so dead
letters are grouped by the original's coordinates (topic, partition, offset) and one
copy is published, with the original key, value and headers plus
``argus.replay_of: <topic>/<partition>/<offset>``. Before publishing, the original topic
is read from the time of the earliest selected dead letter for that header, so running
the same replay again publishes nothing twice. (Run one replay of a topic at a time.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import typer
from rich.table import Table

from services.cli.base import app, console, err, fail, settings

REPLAY_HEADER = "argus.replay_of"
dlq_app = typer.Typer(help="Dead letters: list them, replay them to their original topic.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


@dataclass
class DeadLetter:
    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    record: dict[str, Any]

    @property
    def original(self) -> str:
        r = self.record
        return f"{r['original_topic']}/{r['original_partition']}/{r['original_offset']}"


def _source_key(topic: str) -> str:
    """The registry key of a topic that has a dead-letter topic ('inference-requests')."""
    from services.common.registry import default_registry

    reg = default_registry()
    if topic in reg.topics and reg.topics[topic].dead_letter_topic:
        return topic
    for key, spec in reg.topics.items():
        if spec.name == topic and spec.dead_letter_topic:
            return key
    fail(
        f"{topic!r} is not a registry topic with a dead-letter topic; known: "
        f"{', '.join(sorted(k for k, s in reg.topics.items() if s.dead_letter_topic))}"
    )
    raise AssertionError  # fail() exits


def _since(value: Optional[str]) -> float | None:
    from services.common.durations import parse_duration

    if value is None:
        return None
    try:
        return time.time() - parse_duration(value)
    except ValueError as exc:
        fail(f"--since: {exc}")
    return None


async def read_dead_letters(kafka: Any, keys: list[str]) -> list[DeadLetter]:
    """Every dead letter of the given source topics, from the beginning of their DLQ topics."""
    from aiokafka import TopicPartition

    from services.common.codec import SerializationError
    from services.common.kafka import make_consumer
    from services.common.registry import default_registry

    reg = default_registry()
    consumer = make_consumer(kafka, None)
    await consumer.start()
    out: list[DeadLetter] = []
    try:
        tps = []
        for key in keys:
            dlq_key = reg.topic(key).dead_letter_topic
            assert dlq_key is not None
            tps += [TopicPartition(kafka.topic(dlq_key), p) for p in range(reg.topic(dlq_key).partitions)]
        codec = reg.codec(reg.topic(keys[0]).dead_letter_topic or "")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        todo = [tp for tp in tps if ends[tp] > 0]
        while todo:
            for tp, msgs in (await consumer.getmany(*todo, timeout_ms=1000)).items():
                for m in msgs:
                    if m.offset >= ends[tp]:
                        continue
                    try:
                        rec = codec.decode_plain(m.value)
                    except SerializationError as exc:
                        err.print(f"[yellow]skipped[/] {tp.topic}/{tp.partition}/{m.offset}: not a dead letter ({exc})")
                        continue
                    out.append(DeadLetter(tp.topic, tp.partition, m.offset, rec))
            todo = [tp for tp in todo if await consumer.position(tp) < ends[tp]]
    finally:
        await consumer.stop()
    return out


def select(
    letters: list[DeadLetter], since: float | None, until: float | None, reason: str | None, error_type: str | None
) -> list[DeadLetter]:
    """Dead letters matching every filter given (``failed_at`` within [since, until],
    ``reason`` a substring, ``error_type`` exact)."""
    out = []
    for d in letters:
        failed = d.record["failed_at"] / 1000
        if since is not None and failed < since:
            continue
        if until is not None and failed > until:
            continue
        if reason is not None and reason not in d.record["reason"]:
            continue
        if error_type is not None and d.record["error_type"] != error_type:
            continue
        out.append(d)
    return out


def once_per_original(letters: list[DeadLetter]) -> list[DeadLetter]:
    """One dead letter per original message (the first written), in original order."""
    first: dict[str, DeadLetter] = {}
    for d in sorted(letters, key=lambda d: d.record["failed_at"]):
        first.setdefault(d.original, d)
    return sorted(first.values(), key=lambda d: (d.record["original_partition"], d.record["original_offset"]))


async def already_replayed(kafka: Any, topic: str, partitions: int, since_ms: int) -> set[str]:
    """``argus.replay_of`` values found on ``topic`` from ``since_ms`` on."""
    from aiokafka import TopicPartition

    from services.common.kafka import make_consumer

    consumer = make_consumer(kafka, None)
    await consumer.start()
    seen: set[str] = set()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        starts = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        ends = await consumer.end_offsets(tps)
        todo = []
        for tp in tps:
            start = starts.get(tp)
            if start is not None and start.offset < ends[tp]:
                consumer.seek(tp, start.offset)
                todo.append(tp)
        while todo:
            for tp, msgs in (await consumer.getmany(*todo, timeout_ms=1000)).items():
                for m in msgs:
                    for k, v in m.headers or ():
                        if k == REPLAY_HEADER:
                            seen.add(v.decode(errors="replace"))
            todo = [tp for tp in todo if await consumer.position(tp) < ends[tp]]
    finally:
        await consumer.stop()
    return seen


async def replay(kafka: Any, key: str, letters: list[DeadLetter], dry_run: bool = False) -> tuple[int, int]:
    """Publish each original once; returns (published, skipped as already replayed)."""
    from services.common.kafka import make_producer
    from services.common.registry import default_registry

    spec = default_registry().topic(key)
    chosen = once_per_original(letters)
    if not chosen:
        return 0, 0
    since_ms = min(d.record["failed_at"] for d in chosen) - 1000
    done = await already_replayed(kafka, kafka.topic(key), spec.partitions, since_ms)
    todo = [d for d in chosen if d.original not in done]
    if dry_run or not todo:
        return len(todo) if dry_run else 0, len(chosen) - len(todo)
    producer = make_producer(kafka)
    await producer.start()
    try:
        futures = []
        for d in todo:
            r = d.record
            if r["original_value"] is None:
                continue
            headers = [(REPLAY_HEADER, d.original.encode())]
            futures.append(
                await producer.send(
                    kafka.topic(key),
                    r["original_value"],
                    key=r["original_key"],
                    partition=r["original_partition"],
                    headers=headers,
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures), len(chosen) - len(todo)


def _when(ms: int | None) -> str:
    return "-" if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@dlq_app.command("list")
def dlq_list(
    topic: str = typer.Argument(..., help="The original topic (registry key or Kafka name), e.g. inference-requests."),
    since: Optional[str] = typer.Option(None, help="Only dead letters written in the last DURATION (e.g. 1h)."),
    reason: Optional[str] = typer.Option(None, help="Only those whose reason contains this text."),
    error_type: Optional[str] = typer.Option(None, "--error-type", help="Only this error type."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per dead letter."),
    limit: int = typer.Option(50, help="Rows to show (the newest); 0 for all."),
) -> None:
    """Dead letters of a topic, newest last, with their reason."""
    key = _source_key(topic)
    s = settings()
    letters = select(asyncio.run(read_dead_letters(s.kafka, [key])), _since(since), None, reason, error_type)
    letters.sort(key=lambda d: d.record["failed_at"])
    shown = letters[-limit:] if limit else letters
    if json_out:
        for d in shown:
            r = d.record
            sys.stdout.write(
                json.dumps(
                    {
                        "dlq": f"{d.dlq_topic}/{d.dlq_partition}/{d.dlq_offset}",
                        "original": d.original,
                        "failed_at": _when(r["failed_at"]),
                        "service": r["service"],
                        "consumer_group": r["consumer_group"],
                        "error_type": r["error_type"],
                        "reason": r["reason"],
                        "original_bytes": len(r["original_value"] or b""),
                    }
                )
                + "\n"
            )
        return
    table = Table()
    for col in ("failed at (UTC)", "original", "service", "error type", "reason"):
        table.add_column(col)
    for d in shown:
        r = d.record
        table.add_row(_when(r["failed_at"]), d.original, r["service"], r["error_type"], r["reason"][:120])
    console.print(table)
    err.print(f"{len(letters)} dead letters ({len(once_per_original(letters))} original messages)")


@dlq_app.command("replay")
def dlq_replay(
    topic: str = typer.Argument(..., help="The original topic (registry key or Kafka name)."),
    since: Optional[str] = typer.Option(None, help="Only dead letters written in the last DURATION."),
    reason: Optional[str] = typer.Option(None, help="Only those whose reason contains this text."),
    error_type: Optional[str] = typer.Option(None, "--error-type", help="Only this error type."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be replayed; publish nothing."),
) -> None:
    """Re-publish dead letters to their original topic, each original message once."""
    key = _source_key(topic)
    s = settings()
    letters = select(asyncio.run(read_dead_letters(s.kafka, [key])), _since(since), None, reason, error_type)
    published, skipped = asyncio.run(replay(s.kafka, key, letters, dry_run))
    verb = "would replay" if dry_run else "replayed"
    console.print(f"{verb} {published} messages to {s.kafka.topic(key)}; {skipped} already replayed before")
