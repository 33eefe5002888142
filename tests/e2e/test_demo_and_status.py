"""The local stack as a user runs it: ``argus stack up``, ``argus stack start|stop|status``
and ``argus demo``, each as the real command, on a stack of its own (temporary home,
free loopback ports): Apache Kafka from Maven Central, the ClickHouse endpoint, and every
service as a separate process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from services.stack.kafka_local import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

ARGUS = [sys.executable, "-m", "services.cli"]


def run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*ARGUS, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("stack")
    env = {
        **os.environ,
        "ARGUS_STACK_HOME": str(home),
        "ARGUS_STACK_KAFKA_PORT": str(free_port()),
        "ARGUS_STACK_KAFKA_CONTROLLER_PORT": str(free_port()),
        "ARGUS_STACK_CLICKHOUSE_PORT": str(free_port()),
        "ARGUS_STACK_KEYS_PORT": str(free_port()),
        "ARGUS_STACK_KAFKA_LIBS": str(REPO / ".argus" / "kafka" / "libs"),
        "COLUMNS": "200",
        "ARGUS_CLI_KAFKA__BOOTSTRAP_SERVERS": "",
        "ARGUS_FAUST_DATADIR": str(home / "faust"),
    }
    env["ARGUS_CLI_KAFKA__BOOTSTRAP_SERVERS"] = f"127.0.0.1:{env['ARGUS_STACK_KAFKA_PORT']}"
    up = run(env, "stack", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield env
    finally:
        down = run(env, "stack", "down")
        assert down.returncode == 0, down.stdout + down.stderr


def status(env: dict[str, str]) -> tuple[int, dict[str, dict]]:
    out = run(env, "stack", "status", "--json", timeout=60)
    data = json.loads(out.stdout)
    return out.returncode, {s["name"]: s for s in data["services"]}


def test_status_shows_health_and_broker_lag_and_turns_red_when_a_service_stops(stack_env: dict[str, str]) -> None:
    env = stack_env
    started = run(env, "stack", "start", "ingest", "subscriber")
    assert started.returncode == 0, started.stdout + started.stderr
    assert run(env, "loadgen", "--rate", "20", "--duration", "1", timeout=120).returncode == 0
    deadline = time.monotonic() + 60
    while True:  # ingest has written (and committed) the first requests
        rc, services = status(env)
        if rc == 0 and services["ingest"]["counters"].get("rows_inserted", 0) >= 20 and services["ingest"]["lag"] == 0:
            break
        assert time.monotonic() < deadline, services
        time.sleep(1)
    assert services["subscriber"]["healthy"]

    # ingest stopped: red, and requests produced meanwhile show up as its lag at the broker
    assert run(env, "stack", "stop", "ingest").returncode == 0
    load = run(env, "loadgen", "--rate", "20", "--duration", "1", timeout=120)
    assert load.returncode == 0, load.stdout + load.stderr
    rc, services = status(env)
    assert rc == 1
    assert not services["ingest"]["healthy"] and services["ingest"]["detail"] == "stopped"
    assert services["ingest"]["lag"] >= 20, services["ingest"]
    assert services["subscriber"]["healthy"]
    human = run(env, "stack", "status", timeout=60)
    assert re.search(r"ingest\s.*DOWN", human.stdout), human.stdout

    # started again: it catches up, lag drains, green again
    assert run(env, "stack", "start", "ingest").returncode == 0
    deadline = time.monotonic() + 60
    while True:
        rc, services = status(env)
        if (
            rc == 0
            and services["ingest"]["lag"] == 0
            and services["ingest"]["counters"].get("rows_inserted", 0) >= 20
            and run(env, "sql", "SELECT count() FROM argus.inference_requests", "--format", "csv").stdout.split()[-1]
            == "40"
        ):
            break
        assert time.monotonic() < deadline, services["ingest"]
        time.sleep(2)

    # a crash (SIGKILL) is red too, with the reason
    pid = services["subscriber"]["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    rc, services = status(env)
    assert rc == 1 and services["subscriber"]["detail"].startswith("exited")
    assert run(env, "stack", "stop", "ingest", "subscriber").returncode == 0


@pytest.mark.timeout(540)  # the load (60 s), its answers, 50 HTTP calls, alerts and the report
def test_demo_end_to_end(stack_env: dict[str, str], tmp_path: Path) -> None:
    """The README's demo on its own stack: every service, drift injected, checks pass,
    report with its plots written, every service it started stopped afterwards."""
    report = tmp_path / "report.html"
    t0 = time.monotonic()
    demo = run(
        stack_env, "demo", "--rate", "2", "--duration", "60", "--drift-at", "25", "--report", str(report), timeout=600
    )
    took = time.monotonic() - t0
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out[-6000:]
    for check in (
        "every request answered (120/120)",
        "every request in ClickHouse (120/120)",
        "drift detected after its start",
        "drift alert delivered to the subscriber",
        "retraining trigger raised",
        "HTTP calls in ClickHouse with the API key's tenant (50/50, 25 streamed)",
        "offensive HTTP answers blocked, streamed or not (10/10)",
        "GuardrailBlockRate fired for tenant demo-http from HTTP-only traffic",
    ):
        assert f"✓ {check}" in out, out[-4000:]
    page = report.read_text()
    assert page.count("<svg") == 3 and "drift injected" in page and "change point estimated by" in page
    assert "argus sql" in out and "argus retrain approve" in out
    rc, services = status(stack_env)
    assert all(not s["running"] for s in services.values()), services  # the demo stopped what it started
    assert took < 600
