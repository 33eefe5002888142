"""``argus``: the one command of the platform.

argus stack up | down | status     the local stack (Kafka + ClickHouse endpoint)
argus topics list | create         topics from the registry
argus schemas check                golden examples and compatibility of every schema
argus migrate                      apply ClickHouse migrations to the configured DSN
argus produce TOPIC [FILE]         JSON lines -> Avro wire format -> Kafka
argus consume TOPIC                Kafka -> decoded JSON lines
argus sql "SELECT ..."             query ClickHouse (table, CSV or JSON)
argus alerting                     run the alerting service
argus alerts list | silences | silence | expire | tail
argus retraining                   run the retraining service
argus retrain list | show | approve | reject
argus models list | register
argus demo                         the end-to-end demo on the local stack
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from services.common.settings import ServiceSettings, StackSettings, service_settings

app = typer.Typer(help="Argus: event-driven LLMOps on Kafka, ClickHouse and Ray Serve.", no_args_is_help=True)
stack_app = typer.Typer(
    help="The local stack: Apache Kafka (KRaft) and the ClickHouse engine over HTTP.", no_args_is_help=True
)
topics_app = typer.Typer(help="Topics from the registry in schemas/topics.", no_args_is_help=True)
schemas_app = typer.Typer(help="The Avro contracts in schemas/.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
console = Console()
err = Console(stderr=True)

CliSettings = service_settings("cli")


def _settings() -> ServiceSettings:
    return CliSettings()


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


# -- stack -----------------------------------------------------------------------
@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka and the ClickHouse endpoint (idempotent), create topics, apply migrations."""
    from services.stack.manager import Stack, StackError

    try:
        Stack(StackSettings()).up(progress=lambda m: console.print(f"[green]✓[/] {m}"))
    except StackError as exc:
        _fail(str(exc))


@stack_app.command("down")
def stack_down() -> None:
    """Stop the services `argus stack start` (or a demo) started, then the stack (by pid). Data stays on disk."""
    from services.stack.manager import Stack
    from services.stack.services import LocalServices

    stopped = LocalServices(StackSettings()).stop_all()
    if stopped:
        console.print("stopped services: " + ", ".join(stopped))
    Stack(StackSettings()).down(progress=lambda m: console.print(m))


@stack_app.command("start")
def stack_start(
    names: list[str] = typer.Argument(
        None, help="Services to start (default: all): inference ingest drift alerting retraining subscriber."
    ),
    wait: bool = typer.Option(True, help="Wait until each is ready."),
) -> None:
    """Start platform services as local processes on the local stack (logs and pids under <home>/services)."""
    from services.stack.manager import Stack, StackError
    from services.stack.services import ORDER, LocalServices

    settings = StackSettings()
    try:
        Stack(settings).up(progress=lambda m: None)
        svc = LocalServices(settings)
        chosen = list(names or ORDER)
        for n in chosen:
            rec = svc.start(n)
            console.print(
                f"[green]✓[/] {n:<10} pid {rec['pid']}  {rec['health_url']}  log {rec['log']}", highlight=False
            )
        if wait:
            with console.status("waiting for readiness..."):
                svc.wait_ready(chosen, timeout_s=300)
            console.print("[green]✓[/] ready: " + ", ".join(chosen))
    except StackError as exc:
        _fail(str(exc))


@stack_app.command("stop")
def stack_stop(
    names: list[str] = typer.Argument(..., help="Services to stop; they stay listed (red) in `argus stack status`."),
) -> None:
    """Stop platform services started by `argus stack start` or a demo (SIGTERM, then SIGKILL)."""
    from services.stack.services import LocalServices

    svc = LocalServices(StackSettings())
    for n in names:
        console.print(f"{n}: " + ("stopped" if svc.stop(n) else "was not running"))


@stack_app.command("status")
def stack_status(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Health of each component and of each service started on the stack (readiness, lag
    from the broker, counters from /metrics); exits 1 if any is unhealthy."""
    from dataclasses import asdict

    from services.stack.manager import Stack
    from services.stack.services import LocalServices, as_dict

    settings = StackSettings()
    rows = Stack(settings).status()
    services = LocalServices(settings).status()
    if json_out:
        console.print_json(
            json.dumps({"components": [asdict(r) for r in rows], "services": [as_dict(s) for s in services]})
        )
    else:
        table = Table(title="argus stack")
        for col in ("component", "health", "pid", "address", "detail"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r.name, "[green]healthy[/]" if r.healthy else "[red]DOWN[/]", str(r.pid or "-"), r.address, r.detail
            )
        console.print(table)
        if services:
            t = Table(title="services")
            for col in ("service", "health", "pid", "lag", "consumed", "produced", "dead-lettered", "detail"):
                t.add_column(col)
            for s in services:
                health = "[green]ready[/]" if s.healthy else ("[yellow]not ready[/]" if s.running else "[red]DOWN[/]")
                c = s.counters
                t.add_row(
                    s.name,
                    health,
                    str(s.pid or "-"),
                    "-" if s.lag is None else str(s.lag),
                    _n(c.get("consumed")),
                    _n(c.get("produced")),
                    _n(c.get("dead_lettered")),
                    s.detail[:70],
                )
            console.print(t)
    if not all(r.healthy for r in rows) or not all(s.healthy for s in services):
        raise typer.Exit(1)


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


# -- topics and schemas ----------------------------------------------------------
@topics_app.command("list")
def topics_list() -> None:
    """Every topic of the registry with its schema, partitions and dead-letter topic."""
    from services.common.registry import default_registry

    s = _settings()
    reg = default_registry()
    table = Table(title="topic registry")
    for col in ("key", "kafka topic", "schema", "partitions", "compat", "dead-letter topic"):
        table.add_column(col)
    for key, spec in sorted(reg.topics.items()):
        table.add_row(
            key,
            s.kafka.topic_prefix + spec.name,
            f"{spec.schema}.v{spec.version}",
            str(spec.partitions),
            spec.compatibility,
            spec.dead_letter_topic or "-",
        )
    console.print(table)


@topics_app.command("create")
def topics_create() -> None:
    """Create the registry's topics that do not exist yet on the configured cluster."""
    from services.common.kafka import ensure_topics

    created = asyncio.run(ensure_topics(_settings().kafka))
    console.print(f"created {len(created)} topics" + (": " + ", ".join(created) if created else ""))


@schemas_app.command("check")
def schemas_check() -> None:
    """Validate golden examples and check every version reads every older example."""
    from services.common.compat import check_registry
    from services.common.registry import default_registry

    problems = check_registry(default_registry())
    for p in problems:
        err.print(f"[red]✗[/] {p}")
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {len(default_registry().topics)} topics: examples valid, versions compatible")


@app.command("migrate")
def migrate() -> None:
    """Apply pending ClickHouse migrations to the configured DSN."""
    from services.common import migrations
    from services.common.clickhouse import get_client

    s = _settings()
    client = get_client(s.clickhouse, database="default")
    applied = migrations.apply(client, s.clickhouse.database)
    console.print(f"applied {len(applied)} migrations" + (": " + ", ".join(applied) if applied else " (up to date)"))


# -- produce / consume -------------------------------------------------------------
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


@app.command("ingest")
def ingest() -> None:
    """Run the logging service (Kafka -> ClickHouse); settings from ARGUS_INGEST_*."""
    from services.ingest.__main__ import main as ingest_main

    ingest_main()


# -- sql -----------------------------------------------------------------------------
@app.command("sql")
def sql(
    query: str = typer.Argument(..., help="SQL to run against the configured ClickHouse DSN."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
) -> None:
    """Run a query against ClickHouse (ARGUS_CLI_CLICKHOUSE__DSN; the local stack by default)."""
    from clickhouse_connect.driver.exceptions import ClickHouseError as CHError

    from services.common.clickhouse import get_client
    from services.common.codec import to_json

    s = _settings()
    try:
        result = get_client(s.clickhouse).query(query)
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


# -- demo ----------------------------------------------------------------------------
# -- alerting ---------------------------------------------------------------------------
alerts_app = typer.Typer(help="Alerts and silences of the alerting service.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
_ALERTING_URL = typer.Option(
    "http://127.0.0.1:9095",
    "--url",
    envvar="ARGUS_CLI_ALERTING_URL",
    help="The alerting service's API (its health port).",
)


@app.command("alerting")
def alerting() -> None:
    """Run the alerting service (a faust worker); settings from ARGUS_ALERTING_*."""
    from services.alerting.__main__ import main as alerting_main

    raise typer.Exit(alerting_main([]))


def _api(url: str, path: str) -> list[dict]:
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + path, timeout=10)
    except httpx.HTTPError as exc:
        _fail(f"the alerting service at {url} is not reachable: {exc}")
    if r.status_code != 200:
        _fail(f"{url}{path}: HTTP {r.status_code}: {r.text[:300]}")
    return r.json()


def _when(t: float | None) -> str:
    from datetime import datetime, timezone

    return "" if t is None else datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@alerts_app.command("list")
def alerts_list(url: str = _ALERTING_URL, json_out: bool = typer.Option(False, "--json")) -> None:
    """Alerts the engine holds now (pending, firing, resolved-not-yet-notified)."""
    alerts = _api(url, "/api/v2/alerts")
    if json_out:
        console.print_json(json.dumps(alerts))
        return
    table = Table("state", "alert", "severity", "labels", "value", "since", "muted by")
    for a in alerts:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k not in ("alertname", "severity"))
        muted = ", ".join(a["silenced_by"]) + ("inhibited" if a["inhibited"] else "")
        value = "" if a["value"] is None else f"{a['value']:.4g}"
        table.add_row(
            a["state"], a["rule"], a["severity"], labels, value, _when(a["starts_at"] or a["active_at"]), muted
        )
    console.print(table if alerts else "no alerts")


@alerts_app.command("silences")
def alerts_silences(url: str = _ALERTING_URL, json_out: bool = typer.Option(False, "--json")) -> None:
    """Silences known to the engine (active and recently expired)."""
    silences = _api(url, "/api/v2/silences")
    if json_out:
        console.print_json(json.dumps(silences))
        return
    table = Table("id", "active", "matchers", "ends", "by", "comment")
    for x in sorted(silences, key=lambda x: -x["ends_at"]):
        table.add_row(
            x["id"],
            "yes" if x["active"] else "no",
            " ".join(x["matchers"]),
            _when(x["ends_at"]),
            x["created_by"],
            x["comment"],
        )
    console.print(table if silences else "no silences")


def _publish_silence(record: dict) -> None:
    from services.common.kafka import make_producer
    from services.common.registry import get_codec

    s = _settings()

    async def run() -> None:
        producer = make_producer(s.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(
                s.kafka.topic("alert-silences"),
                get_codec("alert-silences").encode(record),
                key=record["silence_id"].encode(),
            )
        finally:
            await producer.stop()

    asyncio.run(run())


@alerts_app.command("silence")
def alerts_silence(
    matcher: list[str] = typer.Option(
        ..., "--matcher", "-m", help="Alertmanager matcher, e.g. -m 'alertname=\"Drift\"' -m 'model=~\"smollm2.*\"'."
    ),
    duration: str = typer.Option("2h", help="How long, e.g. 30m, 2h, 1d."),
    author: str = typer.Option(..., help="Who silences (kept with the silence)."),
    comment: str = typer.Option(..., help="Why."),
) -> None:
    """Create a silence (published on argus.alerts.silences; the service applies it)."""
    import time

    from services.alerting.app import new_silence_record
    from services.common.durations import parse_duration
    from services.common.labels import Matcher, MatcherError

    try:
        for m in matcher:
            Matcher.parse(m)
        seconds = parse_duration(duration)
    except (MatcherError, ValueError) as exc:
        _fail(str(exc), 2)
    now = time.time()
    record = new_silence_record(list(matcher), now, now + seconds, author, comment)
    _publish_silence(record)
    console.print(f"silence {record['silence_id']} until {_when(now + seconds)} UTC", highlight=False)


@alerts_app.command("expire")
def alerts_expire(
    silence_id: str = typer.Argument(...), author: str = typer.Option(..., help="Who expires it.")
) -> None:
    """End a silence now."""
    import time
    import uuid as _uuid

    from services.alerting.app import new_silence_record

    try:
        _uuid.UUID(silence_id)
    except ValueError:
        _fail(f"{silence_id!r} is not a silence id (a UUID)", 2)
    now = time.time()
    _publish_silence(new_silence_record([], now, now, author, "expired", silence_id=silence_id, action="expire"))
    console.print(f"silence {silence_id} expired", highlight=False)


@alerts_app.command("tail")
def alerts_tail(
    from_beginning: bool = typer.Option(False, "--from-beginning"),
    max_messages: int = typer.Option(0, "--max", help="Stop after this many (0: follow)."),
    idle_timeout: float = typer.Option(0.0, help="Stop after this many seconds without a message (0: never)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Follow argus.alerts: state changes and notifications as they happen."""
    from services.common.codec import to_json

    colors = {"firing": "red", "resolved": "green", "pending": "yellow", "suppressed": "blue"}

    async def run() -> None:
        async for _p, _o, rec, error in _follow("alerts", from_beginning, max_messages, idle_timeout):
            if error is not None:
                err.print(f"undecodable alert record: {error}")
                continue
            if json_out:
                sys.stdout.write(json.dumps(to_json(rec), ensure_ascii=False) + "\n")
                sys.stdout.flush()
                continue
            labels = " ".join(
                f"{k}={v}" for k, v in sorted(rec["labels"].items()) if k not in ("alertname", "severity")
            )
            to = f" -> {rec['receiver']}" if rec["receiver"] else ""
            c = colors.get(rec["status"], "white")
            console.print(
                f"{rec['emitted_at']:%H:%M:%S} [{c}]{rec['status']:<10}[/] {rec['rule']} ({rec['severity']}) "
                f"{labels}{to}  {rec['annotations'].get('summary', '')}",
                highlight=False,
            )

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


# -- retraining and the model registry ---------------------------------------------------
retrain_app = typer.Typer(help="Retraining triggers: list, inspect, approve, reject.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(retrain_app, name="retrain")
app.add_typer(models_app, name="models")


@app.command("retraining")
def retraining() -> None:
    """Run the retraining service; settings from ARGUS_RETRAINING_* (and ARGUS_INFERENCE_* for rollouts)."""
    from services.retraining.__main__ import main as retraining_main

    raise typer.Exit(retraining_main([]))


def _read_all(key: str) -> list[dict]:
    """Every record of a one-partition registry topic, from the beginning (plain values)."""
    from aiokafka import TopicPartition

    from services.common.kafka import make_consumer
    from services.common.registry import get_codec

    s = _settings()
    codec = get_codec(key)

    async def run() -> list[dict]:
        consumer = make_consumer(s.kafka, None)
        await consumer.start()
        try:
            tp = TopicPartition(s.kafka.topic(key), 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            out: list[dict] = []
            while await consumer.position(tp) < end:
                for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    out.append(codec.decode_plain(m.value))
            return out
        finally:
            await consumer.stop()

    return asyncio.run(run())


def _book():  # noqa: ANN202
    from services.retraining.lifecycle import TransitionError, TriggerBook

    book = TriggerBook()
    for rec in _read_all("retraining-triggers"):
        try:
            book.apply(rec)
        except TransitionError:
            pass  # ignored by the service too
    return book


def _publish(key: str, rec: dict, kafka_key: str) -> None:
    from services.common.kafka import make_producer
    from services.common.registry import get_codec

    s = _settings()

    async def run() -> None:
        producer = make_producer(s.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(s.kafka.topic(key), get_codec(key).encode(rec), key=kafka_key.encode())
        finally:
            await producer.stop()

    asyncio.run(run())


@retrain_app.command("list")
def retrain_list(
    all_: bool = typer.Option(False, "--all", help="Closed triggers too."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Open triggers (or all), newest first."""
    triggers = sorted(_book().triggers.values(), key=lambda t: -t.created_at)
    triggers = [t for t in triggers if all_ or t.open]
    if json_out:
        console.print_json(
            json.dumps(
                [
                    {
                        "trigger_id": t.trigger_id,
                        "state": t.state,
                        "model": t.model,
                        "model_version": t.model_version,
                        "policy": t.policy,
                        "reason": t.reason,
                        "candidate_version": t.candidate_version,
                        "created_at": t.created_at,
                    }
                    for t in triggers
                ]
            )
        )
        return
    table = Table("trigger", "state", "model", "version", "policy", "reason", "raised")
    for t in triggers:
        table.add_row(t.trigger_id[:8], t.state, t.model, t.model_version, t.policy, t.reason, _when(t.created_at))
    console.print(table if triggers else "no triggers")


@retrain_app.command("show")
def retrain_show(trigger: str = typer.Argument(..., help="Trigger id or a unique prefix.")) -> None:
    """A trigger's evidence, dataset specification and history."""
    from services.retraining.lifecycle import TransitionError

    try:
        t = _book().find(trigger)
    except TransitionError as exc:
        _fail(str(exc))
    console.print(
        f"[bold]{t.trigger_id}[/] {t.model} {t.model_version} policy={t.policy} state=[bold]{t.state}[/]"
        + (f" candidate={t.candidate_version}" if t.candidate_version else ""),
        highlight=False,
    )
    console.print(f"reason: {t.reason}", highlight=False)
    console.print(
        f"drift events: {', '.join(t.drift_event_ids) or '-'}\nalerts: {', '.join(t.alert_event_ids) or '-'}",
        highlight=False,
    )
    console.print("dataset: " + ", ".join(f"{k}={v}" for k, v in sorted(t.dataset_spec.items())), highlight=False)
    table = Table("#", "state", "by", "comment", "at")
    for h in t.history:
        table.add_row(str(h["sequence"]), h["state"], h["actor"] or "", h["comment"] or "", _when(h["at"]))
    console.print(table)


def _decide(trigger: str, state: str, by: str, comment: str) -> None:
    from services.retraining.lifecycle import TransitionError

    book = _book()
    try:
        t = book.find(trigger)
        rec = book.next_record(t.trigger_id, state, by, comment)
    except TransitionError as exc:
        _fail(str(exc))
    _publish("retraining-triggers", rec, t.trigger_id)
    console.print(f"trigger {t.trigger_id} {state} by {by}", highlight=False)


@retrain_app.command("approve")
def retrain_approve(
    trigger: str = typer.Argument(...),
    by: str = typer.Option(..., help="Who approves."),
    comment: str = typer.Option("", help="Why."),
) -> None:
    """Approve a trigger awaiting approval: the service dispatches the job."""
    _decide(trigger, "approved", by, comment)


@retrain_app.command("reject")
def retrain_reject(
    trigger: str = typer.Argument(...),
    by: str = typer.Option(..., help="Who rejects."),
    comment: str = typer.Option(..., help="Why (kept with the trigger)."),
) -> None:
    """Reject a trigger awaiting approval: nothing is dispatched."""
    _decide(trigger, "rejected", by, comment)


@models_app.command("list")
def models_list(json_out: bool = typer.Option(False, "--json")) -> None:
    """Every registered version with its latest status."""
    from services.retraining.registry import ModelRegistry

    reg = ModelRegistry()
    for rec in _read_all("model-registry"):
        reg.apply(rec)
    rows = sorted(reg.versions.values(), key=lambda r: (r["model"], r["version"]))
    if json_out:
        console.print_json(json.dumps(rows))
        return
    table = Table("model", "version", "status", "sha256", "artifact", "by", "comment")
    for r in rows:
        table.add_row(
            r["model"], r["version"], r["status"], r["sha256"][:12], r["artifact_uri"], r["actor"], r["comment"]
        )
    console.print(table if rows else "no versions registered")


@models_app.command("register")
def models_register(
    model: str = typer.Argument(...),
    version: str = typer.Argument(...),
    artifact: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="The artifact file (its sha256 is computed)."
    ),
    status: str = typer.Option("candidate", help="candidate, or active for the version serving today."),
    trigger: Optional[str] = typer.Option(None, help="The retraining trigger this version answers."),
    parent: Optional[str] = typer.Option(None, help="The version it was trained from."),
    card: list[str] = typer.Option([], help="Model card entries key=value (data window, metrics, limitations, owner)."),
    by: str = typer.Option(..., help="Who registers it."),
    comment: str = typer.Option(""),
    sha256: Optional[str] = typer.Option(
        None, help="The digest the pipeline built (default: computed from ARTIFACT now)."
    ),
) -> None:
    """Register a model version with its artifact's digest and model card. Whatever
    loads the version later (validation, inference) refuses a file with another digest."""
    from services.common.llm import sha256_of
    from services.retraining.registry import version_record

    entries = dict(c.split("=", 1) for c in card if "=" in c)
    if len(entries) != len(card):
        _fail("card entries are key=value", 2)
    digest = sha256 or sha256_of(artifact)
    try:
        rec = version_record(
            model,
            version,
            status,
            str(artifact.resolve()),
            digest,
            actor=by,
            card=entries,
            parent_version=parent,
            trigger_id=trigger,
            comment=comment,
        )
    except ValueError as exc:
        _fail(str(exc), 2)
    _publish("model-registry", rec, f"{model}/{version}")
    console.print(f"registered {model} {version} ({status}) sha256 {digest}", highlight=False)


@app.command("demo")
def demo(
    rate: float = typer.Option(2.0, help="Requests per second from the load generator."),
    duration: float = typer.Option(80.0, help="Seconds of load."),
    drift_at: float = typer.Option(35.0, help="When the prompt-length drift starts (seconds into the load)."),
    max_tokens: int = typer.Option(16, help="Tokens the model generates per answer."),
    report: Path = typer.Option(None, help="Where to write the HTML report (default <home>/demo/<run>/report.html)."),
) -> None:
    """The platform end to end on the local stack: every service as its own process
    (inference, ingest, drift, alerting, retraining, a webhook subscriber), load with a
    drift injected part-way, live progress, a terminal and HTML report. Also round-trips
    every golden example through the broker first. Exits 1 unless every check passed."""
    from services.common.roundtrip import roundtrip_examples
    from services.demo import DemoOptions, run_demo
    from services.stack.manager import Stack, StackError

    started = time.monotonic()
    try:
        Stack(StackSettings()).up(progress=lambda m: console.print(f"[green]✓[/] {m}"))
    except StackError as exc:
        _fail(str(exc))
    results = asyncio.run(roundtrip_examples(Stack(StackSettings()).kafka_settings))
    bad = [r for r in results if not r.equal]
    console.print(
        f"{'[green]✓' if not bad else '[red]✗'}[/] {len(results) - len(bad)}/{len(results)} golden examples "
        "round-tripped through Kafka in the Confluent wire format"
    )
    try:
        outcome = run_demo(
            console,
            DemoOptions(rate=rate, duration_s=duration, drift_at_s=drift_at, max_tokens=max_tokens, report=report),
        )
    except (RuntimeError, StackError) as exc:
        _fail(str(exc))
        return
    console.print(f"demo finished in {time.monotonic() - started:.0f}s")
    if bad or not outcome.ok:
        raise typer.Exit(1)


def main() -> None:
    from services.common.logging import configure_logging

    configure_logging("WARNING", json=False)
    app()


if __name__ == "__main__":
    main()
