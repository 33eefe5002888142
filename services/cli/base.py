"""What every command group shares: the root ``argus`` app, the consoles, the CLI's
settings (``ARGUS_CLI_*``) and how a command fails."""

from __future__ import annotations

import typer
from rich.console import Console

from services.common.settings import ServiceSettings, StackSettings, service_settings

__all__ = ["CliSettings", "StackSettings", "app", "console", "err", "fail", "settings"]

app = typer.Typer(help="Argus: event-driven LLMOps on Kafka, ClickHouse and Ray Serve.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

CliSettings = service_settings("cli")


def settings() -> ServiceSettings:
    return CliSettings()


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
