"""``argus demo``: the platform end to end on the local stack.

1. ``argus stack up`` (Kafka from Maven Central, the ClickHouse endpoint, topics, migrations);
2. the services as separate processes: inference (Ray Serve + SmolLM2 on CPU + the
   Kafka bridge) and logging (ingest);
3. the load generator, with a prompt-length drift injected half-way;
4. live progress (requests sent, answered, rows in ClickHouse, consumer lag), then a
   report from ClickHouse and the SQL an SRE can run next.

The services it started are stopped on exit or Ctrl-C; the stack stays up so the data
can be queried (``argus stack down`` stops it).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.common.settings import StackSettings
from services.stack.kafka_local import free_port

REPO = Path(__file__).resolve().parents[1]


@dataclass
class DemoOptions:
    rate: float = 3.0
    duration_s: float = 40.0
    drift_at_s: float = 20.0
    max_tokens: int = 24
    ready_timeout_s: float = 240.0


class Service:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], health_port: int, log: Path) -> None:
        self.name, self.cmd, self.env, self.health_port, self.log = name, cmd, env, health_port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env={**os.environ, **self.env}, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def readiness(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def run_demo(console: Console, opts: DemoOptions | None = None) -> bool:
    from services.common.clickhouse import get_client
    from services.stack.manager import Stack

    opts = opts or DemoOptions()
    stack_settings = StackSettings()
    stack = Stack(stack_settings)
    stack.up(progress=lambda m: console.print(f"[green]✓[/] {m}"))
    kafka, ch = stack.kafka_settings, stack.clickhouse_settings
    home = Path(stack_settings.home).resolve()
    run_id = uuid.uuid4().hex[:8]
    common = {"RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    ingest = Service("ingest", [sys.executable, "-m", "services.ingest"], {
        **common, "ARGUS_INGEST_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "ARGUS_INGEST_CLICKHOUSE__DSN": ch.dsn.get_secret_value(), "ARGUS_INGEST_HEALTH__PORT": str(free_port()),
        "ARGUS_INGEST_LOG_LEVEL": "WARNING"}, 0, home / "logs" / "ingest.log")
    ingest.health_port = int(ingest.env["ARGUS_INGEST_HEALTH__PORT"])
    inference = Service("inference", [sys.executable, "-m", "services.inference", "serve"], {
        **common, "ARGUS_INFERENCE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "ARGUS_INFERENCE_HEALTH__PORT": str(free_port()), "ARGUS_INFERENCE_HTTP_PORT": str(free_port()),
        "ARGUS_INFERENCE_ENGINE__MAX_TOKENS": str(opts.max_tokens), "ARGUS_INFERENCE_LOG_LEVEL": "WARNING"},
        0, home / "logs" / "inference.log")
    inference.health_port = int(inference.env["ARGUS_INFERENCE_HEALTH__PORT"])
    services = [ingest, inference]

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # run the cleanup below on SIGTERM too, not only Ctrl-C

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        for s in services:
            s.start()
            console.print(f"[green]✓[/] started {s.name} (pid {s.proc.pid}, log {s.log})")
        deadline = time.monotonic() + opts.ready_timeout_s
        with console.status("waiting for the services to be ready (Ray, the model, consumer groups)..."):
            while not all((s.readiness() or {}).get("ready") for s in services):
                for s in services:
                    if s.proc.poll() is not None:
                        raise RuntimeError(f"{s.name} exited ({s.proc.returncode}); see {s.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError("services not ready in time; see " + ", ".join(str(s.log) for s in services))
                time.sleep(1)
        console.print("[green]✓[/] services ready")
        client = get_client(ch)
        sent = asyncio.run(_load(console, kafka, opts, run_id, services, client))
        return _report(console, client, run_id, sent)
    finally:
        for s in services:
            s.stop()
        signal.signal(signal.SIGTERM, previous)
        console.print("stopped the demo's services; the stack is still up: [bold]argus stack down[/] stops it")


def _counts(client, run_id: str) -> tuple[int, int]:  # noqa: ANN001
    rows = client.query(
        "SELECT count(), (SELECT count() FROM argus.inference_responses WHERE NOT shadow AND request_id IN "
        "(SELECT request_id FROM argus.inference_requests WHERE metadata['loadgen_run'] = {r:String})) "
        "FROM argus.inference_requests WHERE metadata['loadgen_run'] = {r:String}", parameters={"r": run_id}
    ).result_rows
    return rows[0][0], rows[0][1]


async def _load(console: Console, kafka, opts: DemoOptions, run_id: str, services, client) -> int:  # noqa: ANN001
    from services.sdk.loadgen import LoadProfile, run_load
    from services.sdk.producer import ArgusProducer

    profile = LoadProfile(rate_per_s=opts.rate, duration_s=opts.duration_s, drift="length", drift_at_s=opts.drift_at_s,
                          max_tokens=opts.max_tokens, run_id=run_id)
    total = int(opts.rate * opts.duration_s)
    state = {"sent": 0, "phase": "baseline"}

    def table() -> Table:
        logged, answered = _counts(client, run_id)
        lag = {s.name: sum(((s.readiness() or {}).get("lag") or {}).values()) for s in services}
        t = Table(title=f"argus demo (run {run_id})")
        for col in ("requests sent", "phase", "requests in ClickHouse", "answered + logged", "ingest lag", "inference lag"):
            t.add_column(col)
        t.add_row(f"{state['sent']}/{total}", state["phase"], str(logged), str(answered), str(lag["ingest"]),
                  str(lag["inference"]))
        return t

    async with ArgusProducer(kafka) as producer:
        task = asyncio.create_task(run_load(producer, profile, lambda n, phase: state.update(sent=n, phase=phase)))
        with Live(table(), console=console, refresh_per_second=2) as live:
            while not task.done():
                await asyncio.sleep(1)
                live.update(await asyncio.to_thread(table))
            await task
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                logged, answered = await asyncio.to_thread(_counts, client, run_id)
                live.update(await asyncio.to_thread(table))
                if logged >= total and answered >= total:
                    break
                await asyncio.sleep(1)
    return total


def _report(console: Console, client, run_id: str, sent: int) -> bool:  # noqa: ANN001
    logged, answered = _counts(client, run_id)
    t = Table(title="what reached ClickHouse")
    for col in ("phase", "requests", "answered", "mean prompt chars", "p50 latency ms", "p95 latency ms", "mean confidence"):
        t.add_column(col)
    rows = client.query(
        "SELECT q.metadata['loadgen_phase'] AS phase, count(), countIf(r.status = 'ok'), round(avg(q.prompt_chars)), "
        "round(quantile(0.5)(r.latency_ms)), round(quantile(0.95)(r.latency_ms)), round(avg(r.mean_logprob), 3) "
        "FROM argus.inference_requests AS q INNER JOIN argus.inference_responses AS r ON r.request_id = q.request_id "
        "WHERE q.metadata['loadgen_run'] = {r:String} AND NOT r.shadow GROUP BY phase ORDER BY phase",
        parameters={"r": run_id}).result_rows
    for row in rows:
        t.add_row(*(str(v) for v in row))
    console.print(t)
    ok = logged == sent and answered == sent
    console.print(f"{'[green]✓' if ok else '[red]✗'}[/] {sent} requests sent, {logged} logged, {answered} answered and logged")
    console.print("\nNext, as an SRE (see docs/sre-queries.md):")
    for q in (
        "SELECT model_version, count(), round(quantile(0.95)(latency_ms)) AS p95_ms FROM argus.inference_log GROUP BY ALL",
        "SELECT toStartOfMinute(served_at) AS t, round(avg(confidence), 3) FROM argus.inference_log GROUP BY t ORDER BY t",
        "SELECT original_topic, reason, count() FROM argus.dead_letters GROUP BY ALL",
    ):
        console.print(f'  argus sql "{q}"', highlight=False, soft_wrap=True)
    return ok
