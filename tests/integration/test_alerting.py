"""The alerting worker (faust-streaming) on the real broker with a real HTTP receiver:
breach -> one grouped, signed Alertmanager webhook; repeat -> no duplicate; clear ->
resolved; silence and inhibition suppress; a receiver failing half its requests still
gets everything with stable idempotency keys; a restart keeps silences and resends
nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiokafka import TopicPartition

from services.alerting.receiver import WebhookReceiver
from services.alerting.records import new_silence_record
from services.common.kafka import make_consumer, make_producer
from services.common.registry import default_registry, get_codec
from services.common.settings import KafkaSettings
from services.common.webhook import verify_signature
from services.stack.kafka_local import free_port
from tests.conftest import REPO
from tests.integration.helpers import cli

API_TOKEN = "test-alerting-api-token"
SECRET = "test-secret-0123456789"


class Receiver(WebhookReceiver):
    """The project's webhook subscriber, checking signatures; every other request fails when flaky."""

    def __init__(self, flaky: bool = False) -> None:
        super().__init__(port=free_port(), secret=SECRET.encode(), fail_every=2 if flaky else 0)

    def groups(self, alertname: str | None = None) -> list[dict[str, Any]]:
        return [
            r["json"]
            for r in self.delivered()
            if alertname is None or r["json"]["groupLabels"].get("alertname") == alertname
        ]


def write_config(path: Path, port: int) -> Path:
    cfg = {
        "rules": [
            {
                "name": "HighErrorRate",
                "source": "responses",
                "metric": "error_rate",
                "by": ["model"],
                "window": "8s",
                "threshold": 0.2,
                "min_events": 10,
                "severity": "critical",
                "annotations": {"summary": "error rate {value:.0%} on {model}", "runbook_url": "https://runbooks/x"},
            },
            {
                "name": "DriftDetected",
                "source": "drift",
                "metric": "count",
                "by": ["model", "feature"],
                "window": "30s",
                "threshold": 0,
                "severity": "warning",
            },
            {
                "name": "DeadLetters",
                "source": "dead_letters",
                "metric": "count",
                "by": ["original_topic"],
                "window": "30s",
                "threshold": 0,
                "severity": "warning",
            },
        ],
        "route": {
            "receiver": "hook",
            "group_by": ["alertname", "model"],
            "group_wait": "1s",
            "group_interval": "3s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {"name": "hook", "webhook_configs": [{"url": f"http://127.0.0.1:{port}/alerts", "secret": "hook"}]}
        ],
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="HighErrorRate"'],
                "target_matchers": ['alertname="DriftDetected"'],
                "equal": ["model"],
            }
        ],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_worker(kafka: KafkaSettings, app_id: str, config: Path, health_port: int, **extra: str) -> subprocess.Popen:
    env = {
        **os.environ,
        **extra,
        **kafka.as_env("ARGUS_ALERTING_"),
        "ARGUS_ALERTING_APP_ID": app_id,
        "ARGUS_ALERTING_CONFIG_FILE": str(config),
        "ARGUS_ALERTING_WEBHOOK_SECRETS": json.dumps({"hook": SECRET}),
        "ARGUS_ALERTING_API_TOKEN": API_TOKEN,
        "ARGUS_ALERTING_EVALUATION_INTERVAL_S": "0.5",
        "ARGUS_ALERTING_HEALTH__PORT": str(health_port),
        "ARGUS_ALERTING_LOG_LEVEL": "INFO",
        "ARGUS_ALERTING_BROKER_SESSION_TIMEOUT_S": "6",
    }
    log = open(f"/tmp/{app_id}-{uuid.uuid4().hex[:4]}.log", "wb")  # a file, never an unread pipe
    return subprocess.Popen(
        [sys.executable, "-m", "services.alerting"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def response(model: str, error: bool) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "response_id": str(uuid.uuid4()),
        "model": model,
        "response_model": model,
        "model_version": "v1",
        "tenant": "acme",
        "output": None if error else "ok",
        "finish_reason": "error" if error else "stop",
        "input_tokens": 5,
        "output_tokens": 7,
        "latency_ms": 120.0,
        "status": "error" if error else "ok",
        "served_at": int(time.time() * 1000),
    }


async def produce(
    kafka: KafkaSettings, key: str, records: list[dict[str, Any]], key_field: str, raw: list[bytes] = ()
) -> None:
    codec = get_codec(key)
    producer = make_producer(kafka)
    await producer.start()
    try:
        for r in records:
            await producer.send(kafka.topic(key), codec.encode(r), key=str(r[key_field]).encode())
        for b in raw:
            await producer.send(kafka.topic(key), b, key=b"bad")
        await producer.flush()
    finally:
        await producer.stop()


async def breach(kafka: KafkaSettings, model: str, errors: int = 10, total: int = 20) -> None:
    await produce(kafka, "inference-responses", [response(model, i < errors) for i in range(total)], "request_id")


async def read_topic(kafka: KafkaSettings, key: str) -> list[dict[str, Any]]:
    codec = get_codec(key)
    consumer = make_consumer(kafka, None)
    await consumer.start()
    try:
        tp = TopicPartition(kafka.topic(key), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[dict[str, Any]] = []
        while len(out) < end:
            out += [codec.decode(m.value) for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])]
        return out
    finally:
        await consumer.stop()


async def until(predicate, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def wait_ready(port: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{port}/api/v2/alerts"
                r = await client.get(url, headers={"Authorization": f"Bearer {API_TOKEN}"})
                if r.status_code == 200:
                    # the control API needs its token: none or a wrong one is refused
                    assert (await client.get(url)).status_code == 401
                    assert (await client.get(url, headers={"Authorization": "Bearer x"})).status_code == 401
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise AssertionError("alerting worker did not become the engine owner")


async def test_breach_dedup_resolve_silence_inhibit_and_restart(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    # the people who silence sign it into the audit trail with their governance keys
    await cli(kafka_settings, "identity", "init", "--name", "alice", "--role", "operator", "--if-missing")
    await cli(kafka_settings, "identity", "init", "--name", "bob", "--role", "approver", "--if-missing")
    receiver = Receiver()
    await receiver.start()
    config = write_config(tmp_path / "alerting.yaml", receiver.port)
    app_id = "alerting-" + uuid.uuid4().hex[:6]
    health = free_port()
    # production mode: the service starts only with rules an operator signed
    signed_only = {"ARGUS_ALERTING_ALLOW_UNSIGNED_RULES": "false"}
    refused = start_worker(kafka_settings, app_id, config, health, **signed_only)
    assert refused.wait(60) == 2, "started with unsigned rules"
    await cli(kafka_settings, "alerts", "sign-rules", str(config), "--by", "alice")
    worker = start_worker(kafka_settings, app_id, config, health, **signed_only)
    try:
        await wait_ready(health)
        # a breach: one grouped, signed webhook in Alertmanager's format
        await breach(kafka_settings, "m1")
        await until(lambda: receiver.groups("HighErrorRate"), 30, "the HighErrorRate webhook")
        first = receiver.delivered()[0]
        assert verify_signature(SECRET.encode(), first["headers"], first["body"])
        p = first["json"]
        assert p["version"] == "4" and p["status"] == "firing" and p["receiver"] == "hook"
        assert p["groupLabels"] == {"alertname": "HighErrorRate", "model": "m1"}
        assert (
            p["alerts"][0]["labels"]["severity"] == "critical"
            and p["alerts"][0]["annotations"]["summary"] == "error rate 50% on m1"
        )
        assert first["headers"]["Idempotency-Key"]
        # the same breach again, within group_interval and beyond it: no duplicate
        await breach(kafka_settings, "m1")
        # drift on m1 is inhibited by its error-rate alert; drift on m2 is not
        example = next(iter(default_registry().examples("drift-events").values()))[0][1]
        events = [
            dict(example, event_id=str(uuid.uuid4()), model=m, detected_at=int(time.time() * 1000))
            for m in ("m1", "m2")
        ]
        await produce(kafka_settings, "drift-events", events, "model")
        await until(lambda: receiver.groups("DriftDetected"), 30, "the DriftDetected webhook for m2")
        await asyncio.sleep(4)  # more than group_interval: time for a duplicate or an un-inhibited m1 to show up
        assert len(receiver.groups("HighErrorRate")) == 1, receiver.groups("HighErrorRate")
        assert [g["groupLabels"]["model"] for g in receiver.groups("DriftDetected")] == ["m2"]
        # a silence (published as the CLI does, signed into the audit trail by alice) suppresses a new breach on m3
        out = await cli(
            kafka_settings,
            "alerts",
            "silence",
            "-m",
            'model="m3"',
            "--duration",
            "1h",
            "--author",
            "alice",
            "--comment",
            "maintenance",
        )
        silence_id = out.split()[1]
        # the same silence for m1, unsigned (anyone who can write the topic): refused, so m1's resolution below is sent
        forged = new_silence_record(['model="m1"'], time.time(), time.time() + 3600, "alice", "forged")
        await produce(kafka_settings, "alert-silences", [forged], "silence_id")
        await asyncio.sleep(1)
        await breach(kafka_settings, "m3")
        # a malformed response is dead-lettered (and the dead letter raises its own alert)
        await produce(kafka_settings, "inference-responses", [], "request_id", raw=[b"\x01not avro"])
        await until(lambda: receiver.groups("DeadLetters"), 30, "the DeadLetters webhook")
        # condition clears: errors leave the 8 s window, healthy traffic -> resolved notification
        await asyncio.sleep(8)
        await breach(kafka_settings, "m1", errors=0)
        await until(lambda: any(g["status"] == "resolved" for g in receiver.groups("HighErrorRate")), 30, "resolved")
        resolved = [g for g in receiver.groups("HighErrorRate") if g["status"] == "resolved"]
        assert [g["groupLabels"]["model"] for g in resolved] == ["m1"]
        refused = [
            d for d in await read_topic(kafka_settings, "alert-silences-dlq") if d["error_type"].startswith("Refused")
        ]
        assert [d["error_type"] for d in refused] == ["Refused.unsigned"], refused
        # drift on m1 was held back while its error-rate alert fired; once that resolved it may be sent
        resolved_at = next(r["at"] for r in receiver.delivered() if r["json"]["status"] == "resolved")
        assert not [
            r
            for r in receiver.delivered()
            if r["json"]["groupLabels"] == {"alertname": "DriftDetected", "model": "m1"} and r["at"] < resolved_at
        ]
        assert resolved[0]["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
        assert not any(g["groupLabels"].get("model") == "m3" for g in receiver.groups()), "silence ignored"
        letters = await read_topic(kafka_settings, "inference-responses-dlq")
        assert letters and letters[0]["service"] == "alerting" and "magic byte" in letters[0]["reason"]

        # restart: silences kept, nothing resent
        sent_before = len(receiver.requests)
        await breach(kafka_settings, "m4")  # firing and notified before the restart
        await until(lambda: any(g["groupLabels"].get("model") == "m4" for g in receiver.groups()), 30, "m4 webhook")
        sent_before = len(receiver.requests)
        await asyncio.sleep(2)  # the notification log reaches its changelog
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker = start_worker(kafka_settings, app_id, config, health, **signed_only)
        await wait_ready(health)
        url = f"http://127.0.0.1:{health}"
        token_file = tmp_path / "alerting-api-token"
        token_file.write_text(API_TOKEN)
        api = {"ARGUS_CLI_ALERTING_TOKEN_FILE": str(token_file)}
        silences = json.loads(await cli(kafka_settings, "alerts", "silences", "--url", url, "--json", env=api))
        alerts = json.loads(await cli(kafka_settings, "alerts", "list", "--url", url, "--json", env=api))
        assert (
            [s["id"] for s in silences] == [silence_id]
            and silences[0]["active"]
            and silences[0]["created_by"] == "alice"
        )
        assert any(a["labels"].get("model") == "m4" and a["state"] == "firing" for a in alerts), alerts
        await breach(kafka_settings, "m3")  # still silenced after the restart
        await asyncio.sleep(6)  # group_wait + group_interval: a resend would show up by now
        assert len(receiver.requests) == sent_before, [
            r["json"]["groupLabels"] for r in receiver.requests[sent_before:]
        ]
        # once the silence is expired, the m3 breach gets through (sent again: the first may have left the window)
        await cli(kafka_settings, "alerts", "expire", silence_id, "--author", "bob")
        await asyncio.sleep(1)
        await breach(kafka_settings, "m3")
        await until(
            lambda: any(g["groupLabels"].get("model") == "m3" for g in receiver.groups()), 30, "m3 after expiry"
        )

        # every state change and notification is on argus.alerts for the logging service (and `alerts tail`)
        records = [
            json.loads(line)
            for line in (
                await cli(kafka_settings, "alerts", "tail", "--from-beginning", "--json", "--idle-timeout", "3")
            ).splitlines()
        ]
        statuses = {(r["rule"], r["labels"].get("model"), r["status"], r["receiver"]) for r in records}
        assert ("HighErrorRate", "m1", "firing", None) in statuses and (
            "HighErrorRate",
            "m1",
            "resolved",
            "hook",
        ) in statuses
        assert ("HighErrorRate", "m3", "suppressed", None) in statuses
        assert ("DriftDetected", "m1", "suppressed", None) in statuses
    finally:
        worker.terminate()
        worker.wait(60)
        await receiver.stop()


async def test_flaky_receiver_gets_every_notification_with_stable_keys(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    receiver = Receiver(flaky=True)
    await receiver.start()
    config = write_config(tmp_path / "alerting.yaml", receiver.port)
    app_id = "alerting-" + uuid.uuid4().hex[:6]
    health = free_port()
    worker = start_worker(kafka_settings, app_id, config, health)
    models = [f"flaky-{i}" for i in range(8)]
    try:
        await wait_ready(health)
        for m in models:
            await breach(kafka_settings, m)
        await until(
            lambda: {g["groupLabels"]["model"] for g in receiver.groups("HighErrorRate")} == set(models),
            60,
            "every group delivered despite 503s",
        )
        assert sum(r["status"] == 503 for r in receiver.requests) >= len(models) // 2  # the failures really happened
        by_group: dict[str, set[str]] = {}
        for r in receiver.requests:
            by_group.setdefault(r["json"]["groupKey"], set()).add(r["headers"]["Idempotency-Key"])
            assert verify_signature(SECRET.encode(), r["headers"], r["body"])
        assert len(by_group) == len(models) and all(len(keys) == 1 for keys in by_group.values()), by_group
        assert receiver.bad_signatures == 0
    finally:
        worker.terminate()
        worker.wait(60)
        await receiver.stop()
