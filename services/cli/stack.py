"""``argus stack``: the local stack and its services."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from services.cli.base import StackSettings, app, console
from services.cli.base import fail as _fail

stack_app = typer.Typer(
    help="The local stack: Apache Kafka (KRaft) and the ClickHouse engine over HTTP.", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
def stack_up(
    insecure: bool = typer.Option(
        False, "--insecure", help="Plaintext Kafka without authentication or ACLs (a new broker only; shown in red)."
    ),
    brokers: int = typer.Option(
        None,
        "--brokers",
        min=1,
        max=5,
        help="Kafka brokers (KRaft, one JVM each, 512 MB heap): 3 gives the registry's replication "
        "(3 copies, min.insync.replicas 2). A new stack only; default 1.",
    ),
) -> None:
    """Start Kafka (SASL_SSL, SCRAM, ACLs from the registry) and the ClickHouse endpoint
    (idempotent), create topics, apply migrations."""
    from services.stack.manager import Stack, StackError

    try:
        options = {"kafka_insecure": True} if insecure else {}
        if brokers is not None:
            options["kafka_brokers"] = brokers
        settings = StackSettings(**options)
        Stack(settings).up(progress=lambda m: console.print(f"[green]✓[/] {m}"))
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
                r.name,
                "[green]healthy[/]" if r.healthy else "[red]DOWN[/]",
                str(r.pid or "-"),
                r.address,
                r.detail.replace("INSECURE", "[bold red]INSECURE[/]"),
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
