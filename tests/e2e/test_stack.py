"""The local stack the way a user runs it: `argus stack up | status | down`, the CLI's
produce/consume/sql, and a restart that keeps topics, committed offsets and rows."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from services.common.kafka import make_consumer
from services.common.settings import KafkaSettings
from services.stack.kafka_local import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("stack-home")
    kafka_port, ch_port = free_port(), free_port()
    env = {
        **os.environ,
        "ARGUS_STACK_HOME": str(home),
        "ARGUS_STACK_KAFKA_PORT": str(kafka_port),
        "ARGUS_STACK_KAFKA_CONTROLLER_PORT": str(free_port()),
        "ARGUS_STACK_CLICKHOUSE_PORT": str(ch_port),
        "ARGUS_STACK_KEYS_PORT": str(free_port()),
        "ARGUS_STACK_KAFKA_LIBS": str(REPO / ".argus" / "kafka" / "libs"),
        "ARGUS_CLI_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
    }
    yield env
    argus(env, "stack", "down", check=False)


def argus(env: dict, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"argus {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def operator(env: dict) -> KafkaSettings:
    """The CLI's principal on the stack under test (SASL_SSL, the stack's CA)."""
    from services.stack.kafka_local import KafkaLocal

    local = KafkaLocal(home=Path(env["ARGUS_STACK_HOME"]), port=int(env["ARGUS_STACK_KAFKA_PORT"]))
    return local.client_settings("argus-operator")


def committed(env: dict, group: str) -> dict[int, int]:
    async def run() -> dict[int, int]:
        c = make_consumer(operator(env), group)
        await c.start()
        try:
            return {p: (await c.committed(TopicPartition("argus.feedback", p))) or 0 for p in range(3)}
        finally:
            await c.stop()

    return asyncio.run(run())


def commit_all(env: dict, group: str) -> int:
    async def run() -> int:
        c = make_consumer(operator(env), group, "argus.feedback")
        await c.start()
        n = 0
        try:
            while n < 5:
                for msgs in (await c.getmany(timeout_ms=1000)).values():
                    n += len(msgs)
            await c.commit()
        finally:
            await c.stop()
        return n

    return asyncio.run(run())


def test_stack_lifecycle_keeps_topics_offsets_and_rows(stack_env: dict) -> None:
    env = stack_env
    up = argus(env, "stack", "up")
    assert "migrations" in up.stdout
    assert argus(env, "stack", "up").returncode == 0  # idempotent
    status = json.loads(argus(env, "stack", "status", "--json").stdout)
    assert {s["name"]: s["healthy"] for s in status["components"]} == {"kafka": True, "keys": True, "clickhouse": True}
    assert status["services"] == []  # none started

    example = (REPO / "schemas/examples/feedback/1/thumbs_down.json").read_text()
    lines = "\n".join(
        json.dumps(dict(json.loads(example), feedback_id=f"00000000-0000-4000-8000-00000000000{i}")) for i in range(5)
    )
    out = argus(env, "produce", "feedback", "--key-field", "request_id", stdin=lines)
    assert "produced 5 records" in out.stdout
    bad = argus(env, "produce", "feedback", stdin='{"feedback_id": "x"}\n', check=False)
    assert bad.returncode == 1 and "line 1" in bad.stderr

    consumed = argus(env, "consume", "feedback", "--from-beginning", "--max", "5")
    assert len(consumed.stdout.splitlines()) == 5
    assert json.loads(consumed.stdout.splitlines()[0])["value"]["kind"] == "thumbs"

    assert commit_all(env, "argus-cli.e2e") == 5
    offsets_before = committed(env, "argus-cli.e2e")
    assert sum(offsets_before.values()) == 5
    refused = argus(env, "sql", "CREATE TABLE argus.notes (n UInt32) ENGINE = MergeTree ORDER BY n", check=False)
    assert refused.returncode == 1 and "ACCESS_DENIED" in refused.stderr  # the default user only reads
    argus(env, "sql", "-u", "argus_admin", "CREATE TABLE argus.notes (n UInt32) ENGINE = MergeTree ORDER BY n")
    argus(env, "sql", "-u", "argus_admin", "INSERT INTO argus.notes SELECT number FROM numbers(1234)")

    down = argus(env, "stack", "down")
    assert "clickhouse" in down.stdout and "kafka" in down.stdout
    status = argus(env, "stack", "status", "--json", check=False)
    assert status.returncode == 1
    assert not any(s["healthy"] for s in json.loads(status.stdout)["components"])

    argus(env, "stack", "up")
    assert committed(env, "argus-cli.e2e") == offsets_before
    rows = argus(env, "sql", "SELECT count() AS n FROM argus.notes", "-f", "json").stdout
    assert json.loads(rows.splitlines()[0]) == {"n": 1234}
    again = argus(env, "consume", "feedback", "--from-beginning", "--max", "5")
    assert len(again.stdout.splitlines()) == 5
    tables = argus(
        env, "sql", "SELECT name FROM system.tables WHERE database = 'argus' ORDER BY name", "-f", "csv"
    ).stdout
    assert "dead_letters" in tables and "schema_migrations" in tables


def test_a_plaintext_broker_is_never_restarted_as_if_it_were_secure(tmp_path) -> None:  # noqa: ANN001
    """The mode a broker's data was made in is kept, and asking for the other one is refused:
    an `--insecure` stack does not come back silently on a plain `argus stack up`."""
    from services.common.settings import StackSettings
    from services.stack.manager import Stack, StackError

    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "security").write_text("plaintext\n")
    with pytest.raises(StackError, match="INSECURE plaintext broker"):
        Stack(StackSettings(home=tmp_path)).up(progress=lambda m: None)
    (tmp_path / "kafka" / "security").write_text("sasl_ssl\n")
    with pytest.raises(StackError, match="secure .SASL_SSL. broker"):
        Stack(StackSettings(home=tmp_path, kafka_insecure=True)).up(progress=lambda m: None)
