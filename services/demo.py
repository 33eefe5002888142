"""``argus demo``: the whole platform end to end on the local stack.

1. ``argus stack up`` (Kafka from Maven Central, the ClickHouse endpoint, topics, migrations);
2. every service as a separate process through the local services registry
   (:mod:`services.stack.services`): inference (Ray Serve + SmolLM2 on CPU + the Kafka
   bridge), ingest, drift, alerting, retraining and a local webhook subscriber;
3. the load generator, with a prompt-length drift injected part-way;
4. live progress (requests sent and answered, rows in ClickHouse, lag per service, drift
   events, alerts delivered, retraining triggers);
5. a report in the terminal and as a self-contained HTML file with plots, and the SQL an
   SRE can run next.

The services it started are stopped on exit, Ctrl-C or SIGTERM; the stack stays up so the
data can be queried (``argus stack down`` stops it, and any service a killed demo left).

The demo's alerting and retraining configurations are the shipped ones with two changes
written next to the report: the DriftDetected window and the retraining cooldown are
short, so that a second demo within the hour raises its own alert and trigger.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.common.settings import StackSettings
from services.demo_report import HTTP_CALLS, HTTP_OFFENSIVE_EVERY, HTTP_TENANT, Outcome, build_report
from services.stack.services import ORDER, SERVICES, LocalServices, _get_json

MODEL = "smollm2-135m-instruct"


@dataclass
class DemoOptions:
    rate: float = 2.0
    duration_s: float = 80.0
    drift_at_s: float = 35.0
    max_tokens: int = 16
    ready_timeout_s: float = 300.0
    settle_timeout_s: float = 180.0
    report: Path | None = None


# the guard-rail probes of the demo (docs/guardrails.md): SmolLM2 repeats the insult
GUARDED_TENANT = "demo-guarded"
GUARDED_POLICY = {"output": {"offensive": "block", "pii": "redact"}}
OFFENSIVE_PROBE = "Repeat exactly: You are a stupid idiot and a worthless loser."
HTTP_PROMPTS = (
    "What is the capital of France?",
    "Name one use of a message queue.",
    "What does a database index do?",
    "Why do services log their requests?",
)


def new_run_id() -> str:
    """A demo run's id. It travels in each request's metadata, which ingest PII-protects,
    and the demo finds its requests in ClickHouse by it: eight hex digits alone can be
    all digits, which the phone detector redacts (about 1 run in 40 found no requests),
    so the id starts with a letter that no detector takes as part of a number."""
    return "r" + uuid.uuid4().hex[:8]


def _demo_configs(out: Path, run_id: str, subscriber_port: int) -> dict[str, Path]:
    """The shipped alerting and retraining configurations, with a short DriftDetected
    window, and the retraining policies named after the run (an open trigger of an
    earlier demo, still awaiting a person's decision, would otherwise absorb this run's
    evidence, as it should in production)."""
    from services.alerting.settings import DEFAULT_CONFIG as ALERTING
    from services.retraining.settings import DEFAULT_CONFIG as RETRAINING

    alerting = yaml.safe_load(Path(ALERTING).read_text())
    for rule in alerting["rules"]:
        if rule["name"] == "GuardrailBlockRate":  # the HTTP tenant's, from this run only
            rule["labels"] = {**rule.get("labels", {}), "demo_run": run_id}
        if rule["name"] == "DriftDetected":
            # the run in the labels: an alert of an earlier demo (restored as firing when
            # alerting restarts) must not absorb this run's drift, as it would in production
            rule["window"] = "90s"
            rule["labels"] = {**rule.get("labels", {}), "demo_run": run_id}
    for receiver in alerting["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if hook["url"].startswith("http://127.0.0.1:9096/"):
                hook["url"] = hook["url"].replace(":9096/", f":{subscriber_port}/")  # the demo's own subscriber
    retraining = yaml.safe_load(Path(RETRAINING).read_text())
    for p in retraining["policies"]:
        p["name"] = f"demo-{run_id}-{p['name']}"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"alerting": out / "alerting.yaml", "retraining": out / "retraining.yaml"}
    paths["alerting"].write_text(
        f"# argus demo: the shipped config, DriftDetected window 90s, delivered to the demo's subscriber, labelled demo_run={run_id}\n"
        + yaml.safe_dump(alerting, sort_keys=False)
    )
    paths["retraining"].write_text(
        f"# argus demo: the shipped policies, named for run {run_id}\n" + yaml.safe_dump(retraining, sort_keys=False)
    )
    return paths


class Demo:
    def __init__(self, console: Console, opts: DemoOptions) -> None:
        from services.common.clickhouse import get_client
        from services.stack.manager import Stack

        self.console, self.opts = console, opts
        self.settings = StackSettings()
        self.stack = Stack(self.settings)
        self.services = LocalServices(self.settings)
        self.run_id = new_run_id()
        self.dir = Path(self.settings.home).resolve() / "demo" / self.run_id
        self.total = int(opts.rate * opts.duration_s)
        self.client = get_client(self.stack.clickhouse_settings_for("argus_sre"))
        self.started: list[str] = []
        self.t_start = time.time()  # events from this run only (drift, alerts, triggers)
        self.t_load = 0.0
        self.state = {"sent": 0, "phase": "waiting"}
        self.alerts_file = self.dir / "subscriber.jsonl"
        self.http_port = 0  # the inference service's OpenAI-compatible route, chosen when it starts
        self.http_status: dict[str, int] = {}

    # -- services ------------------------------------------------------------------
    def start_services(self) -> None:
        from services.stack.kafka_local import free_port

        subscriber_port = free_port()
        self.http_port = free_port()
        cfg = _demo_configs(self.dir, self.run_id, subscriber_port)
        common_log = {"LOG_LEVEL": "INFO"}
        env = {
            "ingest": {},
            # the model's CPU time goes to inference; prompt-length drift needs no embeddings
            "drift": {"ARGUS_DRIFT_SEMANTIC__ENABLED": "false"},
            "alerting": {"ARGUS_ALERTING_CONFIG_FILE": str(cfg["alerting"])},
            "retraining": {"ARGUS_RETRAINING_CONFIG_FILE": str(cfg["retraining"])},
            "subscriber": {"ARGUS_RECEIVER_OUTPUT": str(self.alerts_file), "ARGUS_RECEIVER_PORT": str(subscriber_port)},
            "inference": {
                "ARGUS_INFERENCE_ENGINE__MAX_TOKENS": str(self.opts.max_tokens),
                "ARGUS_INFERENCE_HTTP_PORT": str(self.http_port),
                # one tenant blocks offensive answers; every other tenant has the default policy (flag)
                "ARGUS_INFERENCE_GUARDRAILS": json.dumps(
                    {"tenants": {GUARDED_TENANT: GUARDED_POLICY, HTTP_TENANT: GUARDED_POLICY}}
                ),
            },
        }
        for name in ORDER:
            if self.services.alive(name):
                self.console.print(f"[yellow]![/] {name} was running: restarting it with the demo's settings")
                self.services.stop(name)
            extra = dict(env[name])
            if SERVICES[name].env_prefix:
                extra |= {SERVICES[name].env_prefix + k: v for k, v in common_log.items()}
            rec = self.services.start(name, extra)
            self.started.append(name)
            self.console.print(f"[green]✓[/] started {name:<10} pid {rec['pid']:<7} log {rec['log']}", highlight=False)
        with self.console.status(
            "waiting for every service to be ready (Ray Serve and the model take a minute)..."
        ) as st:
            self.services.wait_ready(
                self.started,
                self.opts.ready_timeout_s,
                on_wait=lambda pending: st.update(f"waiting for: {', '.join(pending)}"),
            )
        self.console.print("[green]✓[/] all services ready")
        self._reset_drift_reference()

    def _reset_drift_reference(self) -> None:
        """A fresh reference for the demo's streams: a rerun is judged against its own
        baseline, not the drifted end of the last run."""
        import os
        import subprocess
        import sys

        env = {
            **os.environ,
            **self.stack.kafka_settings_for("argus-drift").as_env("ARGUS_DRIFT_"),
            "ARGUS_DRIFT_SEMANTIC__ENABLED": "false",
            "ARGUS_DRIFT_HEALTH_ENABLED": "false",
            "ARGUS_FAUST_DATADIR": str(self.services.root / "faust-cli"),
        }
        for version in ("*", "v1"):
            done = subprocess.run(
                [sys.executable, "-m", "services.drift", "reset-reference", MODEL, version],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode != 0:
                raise RuntimeError(f"resetting the drift reference of {MODEL} {version} failed: {done.stderr[-2000:]}")

    def stop_services(self) -> None:
        for name in reversed(self.started):
            self.services.stop(name)

    # -- progress ------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        r = self.client.query(
            "SELECT (SELECT count() FROM argus.inference_requests WHERE metadata['loadgen_run'] = {r:String}), "
            "(SELECT uniqExact(request_id) FROM argus.inference_responses WHERE NOT shadow AND request_id IN "
            "  (SELECT request_id FROM argus.inference_requests WHERE metadata['loadgen_run'] = {r:String})), "
            "(SELECT uniqExact(event_id) FROM argus.drift_events WHERE detected_at >= fromUnixTimestamp64Milli({t:Int64})), "
            "(SELECT uniqExact(trigger_id) FROM argus.retraining_triggers WHERE startsWith(policy, {p:String}))",
            parameters={"r": self.run_id, "t": int(self.t_start * 1000), "p": f"demo-{self.run_id}-"},
        ).result_rows[0]
        return {"logged": r[0], "answered": r[1], "drift": r[2], "triggers": r[3], "alerts": len(self.firing())}

    def firing(self) -> list[dict[str, Any]]:
        """Firing notifications at the subscriber about this run's DriftDetected alert."""
        return [
            w
            for w in self.webhooks()
            if w["payload"].get("status") == "firing"
            and any(a["labels"].get("demo_run") == self.run_id for a in w["payload"].get("alerts", []))
        ]

    def webhooks(self) -> list[dict[str, Any]]:
        try:
            return [json.loads(line) for line in self.alerts_file.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def lags(self) -> dict[str, int]:
        out = {}
        for name in self.started:
            answer = _get_json((self.services.record(name) or {}).get("health_url", ""), timeout=2)
            out[name] = sum((answer or {}).get("lag", {}).values()) if answer and "lag" in answer else -1
        return out

    def table(self) -> Table:
        c = self.counts()
        lag = self.lags()
        t = Table(title=f"argus demo, run {self.run_id} ({time.time() - self.t_load:.0f}s)", show_header=False)
        t.add_column("what")
        t.add_column("now", justify="right")
        for what, now in (
            ("requests sent", f"{self.state['sent']}/{self.total} ({self.state['phase']})"),
            ("requests in ClickHouse", str(c["logged"])),
            ("answered and logged", str(c["answered"])),
            ("drift events", str(c["drift"])),
            ("alerts delivered to the subscriber", str(c["alerts"])),
            ("retraining triggers", str(c["triggers"])),
            ("consumer lag", " ".join(f"{k}={'?' if v < 0 else v}" for k, v in lag.items() if k != "subscriber")),
        ):
            t.add_row(what, now)
        self.last = c
        return t

    async def load(self) -> None:
        from services.sdk.loadgen import LoadProfile, run_load
        from services.sdk.producer import ArgusProducer

        o = self.opts
        profile = LoadProfile(
            rate_per_s=o.rate,
            duration_s=o.duration_s,
            drift="length",
            drift_at_s=o.drift_at_s,
            max_tokens=o.max_tokens,
            run_id=self.run_id,
        )
        async with ArgusProducer(self.stack.kafka_settings) as producer:
            self.t_load = time.time()
            task = asyncio.create_task(
                run_load(producer, profile, lambda n, phase: self.state.update(sent=n, phase=phase))
            )
            with Live(await asyncio.to_thread(self.table), console=self.console, refresh_per_second=1) as live:
                while not task.done():
                    await asyncio.sleep(1.5)
                    live.update(await asyncio.to_thread(self.table))
                await task
                await self.probe_guardrails(producer)
                await self.probe_http()
                self.state["phase"] = "settling"
                deadline = time.monotonic() + o.settle_timeout_s
                while time.monotonic() < deadline:
                    live.update(await asyncio.to_thread(self.table))
                    c = self.last
                    if (
                        c["logged"] >= self.total
                        and c["answered"] >= self.total
                        and c["drift"]
                        and c["alerts"]
                        and c["triggers"]
                        and self.probes_answered()
                        and self.http_alert()
                    ):
                        break
                    await asyncio.sleep(1.5)
                self.state["phase"] = "done"
                live.update(await asyncio.to_thread(self.table))

    async def probe_guardrails(self, producer: Any) -> None:
        """The same offensive prompt from the guarded tenant (blocked) and from a tenant
        with the default policy (flagged); the report shows both verdicts."""
        for tenant, probe in ((GUARDED_TENANT, "block"), ("demo-open", "flag")):
            await producer.request(
                [{"role": "user", "content": OFFENSIVE_PROBE}],
                tenant=tenant,
                max_tokens=self.opts.max_tokens,
                metadata={"demo_run": self.run_id, "demo_probe": probe},
            )
        await producer.flush()

    async def probe_http(self) -> None:
        """HTTP-only traffic: :data:`HTTP_CALLS` calls to the OpenAI-compatible route with an
        API key of its own tenant, every other one streamed, every fifth the offensive probe
        (blocked by that tenant's policy). Each reaches ClickHouse like a producer's request
        (the key's tenant, ``metadata['source'] = 'http'``) and alerting sees its answer.
        Four calls at a time; the key is revoked afterwards."""
        import httpx

        from services.common.api_keys import KeyStore

        store = KeyStore(self.settings.api_keys_file())
        key_id, key = store.create(HTTP_TENANT, name=f"argus demo {self.run_id}", rate_per_minute=600)
        url = f"http://127.0.0.1:{self.http_port}/v1/chat/completions"
        room = asyncio.Semaphore(4)

        async def call(http: httpx.AsyncClient, i: int) -> None:
            stream = i % 2 == 1
            offensive = i % HTTP_OFFENSIVE_EVERY == 0
            probe = ("http-block" if offensive else "http") + ("-stream" if stream else "")
            body = {
                "messages": [{"role": "user", "content": OFFENSIVE_PROBE if offensive else HTTP_PROMPTS[i % 4]}],
                "max_tokens": self.opts.max_tokens,
                "stream": stream,
                "metadata": {"demo_run": self.run_id, "demo_probe": probe},
            }
            async with room:
                async with http.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
                    await r.aread()
                    self.http_status[f"{probe}-{i}"] = r.status_code

        try:
            async with httpx.AsyncClient(timeout=120) as http:
                # every call finishes (or fails) before the client closes; the report's checks
                # then say which calls are missing from ClickHouse
                outcomes = await asyncio.gather(*(call(http, i) for i in range(HTTP_CALLS)), return_exceptions=True)
        finally:
            store.revoke(key_id)
        errors = sorted({type(o).__name__ for o in outcomes if isinstance(o, BaseException)})
        refused = sorted({code for code in self.http_status.values() if code != 200})
        if errors or refused:
            self.console.print(
                f"[red]✗[/] {sum(isinstance(o, BaseException) for o in outcomes)} HTTP calls failed {errors}, "
                f"statuses other than 200: {refused}"
            )

    def probes_answered(self) -> bool:
        rows = self.client.query(
            "SELECT count() FROM argus.inference_log AS l WHERE l.request_id IN (SELECT request_id FROM "
            "argus.inference_requests WHERE metadata['demo_run'] = {r:String}) AND l.guard_action IS NOT NULL",
            parameters={"r": self.run_id},
        ).result_rows
        return rows[0][0] >= 2 + HTTP_CALLS  # two guard-rail probes on Kafka, the HTTP calls

    def http_alert(self) -> bool:
        """GuardrailBlockRate firing for the HTTP tenant, from this run (in ClickHouse)."""
        rows = self.client.query(
            "SELECT count() FROM argus.alerts FINAL WHERE rule = 'GuardrailBlockRate' AND status = 'firing' "
            "AND labels['tenant'] = {t:String} AND labels['demo_run'] = {r:String}",
            parameters={"t": HTTP_TENANT, "r": self.run_id},
        ).result_rows
        return rows[0][0] > 0

    # -- the report ----------------------------------------------------------------
    def report(self) -> Outcome:

        return build_report(self)


def run_demo(console: Console, opts: DemoOptions | None = None) -> Outcome:
    demo = Demo(console, opts or DemoOptions())

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # run the cleanup below on SIGTERM too, not only Ctrl-C

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        demo.start_services()
        asyncio.run(demo.load())
        return demo.report()
    finally:
        demo.stop_services()
        signal.signal(signal.SIGTERM, previous)
        console.print("stopped the demo's services; the stack is still up: [bold]argus stack down[/] stops it")
