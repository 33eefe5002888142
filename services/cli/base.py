"""What every command group shares: the root ``argus`` app, the consoles, the CLI's
settings (``ARGUS_CLI_*``) and how a command fails."""

from __future__ import annotations

import typer
from rich.console import Console

from services.common.settings import ClickHouseSettings, ServiceSettings, StackSettings, service_settings

__all__ = ["CliSettings", "StackSettings", "admin_kafka", "app", "clickhouse_for", "console", "err", "fail", "settings"]

app = typer.Typer(help="Argus: event-driven LLMOps on Kafka, ClickHouse and Ray Serve.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

CliSettings = service_settings("cli")


def settings() -> ServiceSettings:
    """``ARGUS_CLI_*``; on the local stack (its broker, no security settings given) the CLI
    authenticates as the stack's ``argus-operator`` principal."""
    import os

    s = CliSettings()
    if any(k.upper().startswith("ARGUS_CLI_KAFKA__SECURITY_PROTOCOL") for k in os.environ):
        return s
    stack = StackSettings()
    if s.kafka.bootstrap_servers.split(",")[0] != stack.bootstrap:  # a stack of several brokers: its first
        return s
    from services.stack.manager import Stack

    local = Stack(stack)
    if not local.kafka.secure:  # the local stack's one broker: its topics get one copy
        return s.model_copy(update={"kafka": s.kafka.model_copy(update={"replication": "single-broker"})})
    op = local.kafka_settings_for("argus-operator")
    return s.model_copy(update={"kafka": op.model_copy(update={"topic_prefix": s.kafka.topic_prefix})})


def admin_kafka():  # noqa: ANN201 - KafkaSettings
    """Kafka settings allowed to manage users, ACLs and topics: ``ARGUS_CLI_KAFKA__*`` when
    the security settings are given (a cluster operator's super user); on the local stack,
    the stack's own super user ``argus-admin``."""
    import os

    s = CliSettings()
    if any(k.upper().startswith("ARGUS_CLI_KAFKA__SECURITY_PROTOCOL") for k in os.environ):
        return s.kafka
    stack = StackSettings()
    if s.kafka.bootstrap_servers.split(",")[0] != stack.bootstrap:
        return s.kafka
    from services.stack.manager import Stack

    local = Stack(stack)
    return local.kafka_settings.model_copy(update={"topic_prefix": s.kafka.topic_prefix})


def clickhouse_for(user: str) -> ClickHouseSettings:
    """``ARGUS_CLI_CLICKHOUSE__DSN`` when set; otherwise the local stack's DSN of ``user``
    (``argus_sre`` to read, the admin to migrate), never an anonymous one."""
    import os

    if any(k.upper() == "ARGUS_CLI_CLICKHOUSE__DSN" for k in os.environ):
        return CliSettings().clickhouse
    try:
        return ClickHouseSettings(dsn=StackSettings().clickhouse_dsn(user))
    except ValueError as exc:
        fail(f"{exc}; or set ARGUS_CLI_CLICKHOUSE__DSN")
        raise


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def when(t: float | None) -> str:
    """A UTC time (epoch seconds) as people read it."""
    from datetime import datetime, timezone

    return "" if t is None else datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
