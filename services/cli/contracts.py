"""``argus topics``, ``argus schemas`` and ``argus migrate``: the contracts and the ClickHouse schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.table import Table

from services.cli.base import app, clickhouse_for, console, err
from services.cli.base import settings as _settings

topics_app = typer.Typer(help="Topics from the registry in schemas/topics.", no_args_is_help=True)
schemas_app = typer.Typer(help="The Avro contracts in schemas/.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")


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


@schemas_app.command("roundtrip")
def schemas_roundtrip() -> None:
    """Send every golden example through the configured broker (to ``selftest.`` copies
    of the topics) and check each comes back decoded as it was sent."""
    from services.common.roundtrip import roundtrip_examples

    results = asyncio.run(roundtrip_examples(_settings().kafka))
    bad = [r for r in results if not r.equal]
    for r in bad:
        err.print(f"[red]✗[/] {r.topic}: {r.example} came back different from {r.kafka_topic}")
    if bad or not results:
        raise typer.Exit(1)
    console.print(
        f"[green]✓[/] {len(results)} golden examples round-tripped through Kafka in the Confluent wire format"
    )


@app.command("migrate")
def migrate() -> None:
    """Apply pending ClickHouse migrations to the configured DSN."""
    from services.common import migrations
    from services.common.clickhouse import get_client
    from services.common.clickhouse_access import ADMIN

    ch = clickhouse_for(ADMIN)
    client = get_client(ch, database="default")
    applied = migrations.apply(client, ch.database)
    console.print(f"applied {len(applied)} migrations" + (": " + ", ".join(applied) if applied else " (up to date)"))


@app.command("clickhouse-users")
def clickhouse_users(
    out: Path = typer.Option(Path("deploy/clickhouse/users.d"), "--out", help="the users.d directory to write"),
    check: bool = typer.Option(False, "--check", help="fail when a file differs instead of writing it"),
) -> None:
    """Render each role of services/common/clickhouse_access.py as a production users.d file."""
    from services.common.clickhouse_access import ROLES, users_xml

    stale = []
    for role in ROLES.values():
        path = out / f"{role.name}.xml"
        text = users_xml(role)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        console.print(f"wrote {path}")
    if stale:
        err.print("out of date (run `argus clickhouse-users`): " + ", ".join(stale))
        raise typer.Exit(1)
