"""``argus demo``: the platform end to end on the local stack."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import typer

from services.cli.base import StackSettings, app, console
from services.cli.base import fail as _fail


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
