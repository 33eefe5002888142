"""Retraining end to end on the real broker, ClickHouse engine and Ray Serve with the
real SmolLM2 model, every service as it runs in production:

run 1: the loadgen's topic drift -> the drift worker's DriftEvent (real embeddings, MMD)
-> the alerting worker's DriftDetected alert -> a trigger with its evidence and a dataset
spec counted in ClickHouse -> approved with `argus retrain approve` -> the job reaches
a pipeline receiver (signed webhook), which registers a candidate with
`argus models register` -> validation on a ClickHouse holdout with llama.cpp -> canary
(Serve weights 90/10) -> promoted after a clean observation period.

run 2: a business-metric policy (a ClickHouse query over feedback) raises a trigger;
the first is rejected (nothing dispatched), the next approved; its candidate goes to
canary, an error-rate alert fires for the canary -> automatic rollback. A tampered
candidate artifact is refused at the validation gate.

Every transition is in ClickHouse, in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from ray import serve

from services.alerting.receiver import WebhookReceiver
from services.common import migrations
from services.common.clickhouse import get_client
from services.common.governance import Signer
from services.common.kafka import make_producer
from services.common.llm import packaged_model_path, sha256_of
from services.common.registry import get_codec
from services.common.settings import ClickHouseSettings, KafkaSettings
from services.common.signing import load_key
from services.inference.app import deploy
from services.inference.bridge import InferenceBridge
from services.inference.serving import ServingStateApplier
from services.inference.settings import BridgeSettings, EngineSettings, InferenceSettings
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings
from services.retraining.config import load_config
from services.retraining.lifecycle import record
from services.retraining.registry import with_status
from services.retraining.service import RetrainingService
from services.retraining.settings import RetrainingSettings
from services.sdk.loadgen import LoadProfile, make_prompt
from services.sdk.producer import ArgusProducer
from services.stack.kafka_local import free_port
from tests.conftest import REPO
from tests.integration.helpers import cli

MODEL = "smollm2-135m-instruct"
SECRET = "pipeline-secret"


def alerting_config(path: Path, port: int) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "DriftDetected",
                        "source": "drift",
                        "metric": "count",
                        "by": ["model", "model_version", "feature"],
                        "window": "10m",
                        "threshold": 0,
                        "severity": "warning",
                        "matchers": ['feature="prompt_embedding"'],
                        "annotations": {"summary": "{feature} drifted on {model}"},
                    },
                    {
                        "name": "GovernanceRecordRefused",
                        "source": "dead_letters",
                        "metric": "count",
                        "by": ["original_topic", "error_type"],
                        "matchers": ['error_type=~"Refused\\..*"'],
                        "window": "1h",
                        "threshold": 0,
                        "severity": "critical",
                    },
                    {
                        "name": "CanaryErrors",
                        "source": "responses",
                        "metric": "error_rate",
                        "by": ["model", "model_version"],
                        "window": "60s",
                        "threshold": 0.2,
                        "min_events": 5,
                        "severity": "critical",
                    },
                ],
                "route": {"receiver": "hook", "group_wait": "1s", "group_interval": "5s"},
                "receivers": [{"name": "hook", "webhook_configs": [{"url": f"http://127.0.0.1:{port}/alerts"}]}],
            }
        )
    )
    return path


def retraining_config(port: int) -> dict[str, Any]:
    return {
        "policies": [
            {"name": "drift-alert", "kind": "alert", "matchers": ['alertname="DriftDetected"'], "cooldown": "1h"},
            {
                "name": "quality",
                "kind": "metric",
                "model": MODEL,
                "model_version": "v2",
                "every": "1s",
                "cooldown": "1s",
                "query": "SELECT count() FROM {db}.feedback FINAL WHERE label = 'wrong'",
                "op": ">",
                "threshold": 0,
            },
        ],
        "dataset": {"window": "1d"},
        "dispatch": {"webhook": {"url": f"http://127.0.0.1:{port}/jobs", "secret": "pipeline"}},
        "validation": {"holdout_size": 6, "max_tokens": 8, "max_empty_rate": 0.5, "min_confidence_delta": -1.0},
        "canary": {"weight": 10, "observe_for": "4s"},
    }


def worker(module: str, prefix: str, kafka: KafkaSettings, extra: dict[str, str], name: str) -> subprocess.Popen:
    env = {
        **os.environ,
        **kafka.as_env(f"ARGUS_{prefix}_"),
        f"ARGUS_{prefix}_LOG_LEVEL": "INFO",
        f"ARGUS_{prefix}_BROKER_SESSION_TIMEOUT_S": "6",
        **extra,
    }
    log = open(f"/tmp/{name}-{uuid.uuid4().hex[:4]}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


RUNNING: list[asyncio.Task] = []  # in-process services: a crash fails the wait at once, with its error


async def until(predicate, timeout_s: float, what: str) -> Any:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for task in RUNNING:
            if task.done():
                task.result()
                raise AssertionError(f"{task.get_name()} stopped while waiting for {what}")
        value = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def states(ch: Any, db: str, trigger_id: str | None = None) -> list[tuple[str, int, str]]:
    where = f"WHERE trigger_id = '{trigger_id}'" if trigger_id else ""
    return [
        tuple(r)
        for r in ch.query(
            f"SELECT toString(trigger_id), sequence, state FROM {db}.retraining_triggers FINAL {where} "
            "ORDER BY trigger_id, sequence"
        ).result_rows
    ]


async def forge_and_expect_refusals(
    k: KafkaSettings, ch: Any, db: str, service: RetrainingService, t: Any, keys: Path, alerts_rx: Any
) -> None:
    """An unsigned approval, an approval signed by a pipeline key, a valid approval of
    another trigger replayed onto this one, and a `validated` record signed by an
    approver: each is dead-lettered with its reason, and GovernanceRecordRefused fires."""
    approver = Signer("jane.sre", load_key(keys / "jane.sre.pem"))
    pipeline_key = Signer("pipeline", load_key(keys / "pipeline.pem"))
    codec = get_codec("retraining-triggers")

    def sign(signer: Signer, rec: dict[str, Any]) -> dict[str, Any]:
        return signer.sign_record(codec.name, codec.version, rec)

    approval = service.book.next_record(t.trigger_id, "approved", "jane.sre", "looks fine")
    other = sign(approver, {**approval, "trigger_id": str(uuid.uuid4()), "event_id": str(uuid.uuid4())})
    forged = [
        ("Refused.unsigned", approval),
        ("Refused.wrong_role", sign(pipeline_key, {**approval, "event_id": str(uuid.uuid4())})),
        ("Refused.bad_signature", {**other, "trigger_id": t.trigger_id}),
        (
            "Refused.wrong_role",
            sign(
                approver,
                record(t.trigger_id, t.sequence + 1, t.model, t.model_version, t.policy, "validated", t.reason, "x"),
            ),
        ),
    ]
    producer = make_producer(k)
    await producer.start()
    try:
        for _, rec in forged:
            await producer.send_and_wait(k.topic("retraining-triggers"), codec.encode(rec), key=t.trigger_id.encode())
    finally:
        await producer.stop()

    def refused(service: str = "retraining") -> list[tuple[str, str]]:
        return [
            tuple(r)
            for r in ch.query(
                f"SELECT error_type, reason FROM {db}.dead_letters FINAL WHERE original_topic = {{t:String}} "
                "AND service = {s:String} ORDER BY original_offset",
                parameters={"t": k.topic("retraining-triggers"), "s": service},
            ).result_rows
        ]

    rows = await until(lambda: len(refused()) >= 4 and refused(), 60, "four refused records in ClickHouse")
    # ingest refused them too: ClickHouse's trigger history holds only what trusted keys signed
    await until(lambda: [r[0] for r in refused("ingest")] == [r[0] for r in rows], 60, "ingest's refusals")
    assert [r[0] for r in rows] == [kind for kind, _ in forged], rows
    assert "not signed" in rows[0][1] and "with the approver role" in rows[1][1], rows
    assert "does not match" in rows[2][1] and "with the service role" in rows[3][1], rows

    def alerted() -> bool:
        return any(
            a["labels"].get("alertname") == "GovernanceRecordRefused"
            for r in alerts_rx.delivered()
            for a in r["json"].get("alerts", [])
        )

    await until(alerted, 90, "the GovernanceRecordRefused alert at the subscriber")


async def retire_v1(k: KafkaSettings, ch: Any, db: str, service: RetrainingService, keys: Path) -> None:
    """An operator retires v1 (deprecated since v2's promotion): `argus models show` has
    its card, its verified artifact signature and its history; a signed record that would
    make it active again is refused; retiring it twice is an error."""
    await cli(k, "models", "retire", MODEL, "v1", "--by", "ops", "--comment", "superseded; licence review")
    await until(lambda: service.registry.retired(MODEL, "v1"), 60, "v1 retired")
    shown = json.loads(await cli(k, "models", "show", MODEL, "v1", "--json"))
    assert shown["status"] == "retired" and shown["card"] == {"owner": "ml-platform"}, shown
    assert shown["artifact_signature"]["check"].startswith("verified: signed by ops"), shown
    assert [h["status"] for h in shown["history"]] == ["active", "deprecated", "retired"], shown
    assert shown["history"][-1]["comment"] == "superseded; licence review"
    text = await cli(k, "models", "show", MODEL, "v1")
    assert "owner" in text and "ml-platform" in text and "verified" in text

    codec = get_codec("model-registry")
    ops = Signer("ops", load_key(keys / "ops.pem"))
    back = ops.sign_record(codec.name, codec.version, with_status(service.registry.get(MODEL, "v1"), "active", "ops"))
    producer = make_producer(k)
    await producer.start()
    try:
        await producer.send_and_wait(k.topic("model-registry"), codec.encode(back), key=f"{MODEL}/v1".encode())
    finally:
        await producer.stop()

    def refused() -> list[tuple]:
        return ch.query(
            f"SELECT error_type, reason FROM {db}.dead_letters FINAL WHERE original_topic = {{t:String}} "
            "AND service = 'retraining'",
            parameters={"t": k.topic("model-registry")},
        ).result_rows

    rows = await until(refused, 60, "the re-activation of a retired version refused")
    assert rows[0][0] == "Refused.retired" and "cannot become active" in rows[0][1], rows
    assert service.registry.get(MODEL, "v1")["status"] == "retired"
    await until(
        lambda: (
            ch.query(
                f"SELECT count() FROM {db}.audit_log WHERE action = 'governance.refused' AND detail['kind'] = 'retired'"
            ).result_rows[0][0]
            == 1
        ),
        60,
        "the refusal in the audit trail",
    )
    await cli(k, "models", "retire", MODEL, "v1", "--by", "ops", "--comment", "again", expect_rc=1)  # already retired


async def test_drift_to_promotion_and_canary_alert_to_rollback(
    ray_serve,  # noqa: ANN001
    kafka_settings: KafkaSettings,
    clickhouse_settings: ClickHouseSettings,
    clickhouse_as,  # noqa: ANN001
    governance: Path,
    tmp_path: Path,
) -> None:
    k, db = kafka_settings, clickhouse_settings.database
    ch = get_client(clickhouse_settings)
    stop = asyncio.Event()
    tasks = RUNNING
    tasks.clear()
    procs: list[subprocess.Popen] = []
    pipeline = await WebhookReceiver(port=free_port(), path="/jobs", secret=SECRET.encode()).start()
    alerts_rx = await WebhookReceiver(port=free_port()).start()
    try:
        # the serving side: Ray Serve with v1, the Kafka bridge, and the logging service
        inference = InferenceSettings(
            kafka=k,
            engine=EngineSettings(max_tokens=8, max_batch_size=2),
            bridge=BridgeSettings(group_id="bridge-" + uuid.uuid4().hex[:6], max_in_flight=4),
        )
        router = await asyncio.to_thread(deploy, inference)
        bridge = InferenceBridge(inference, router)
        tasks.append(asyncio.create_task(bridge.run(stop), name="bridge"))
        # traffic changes reach the inference side only as serving-state records
        serving_producer = make_producer(k)
        await serving_producer.start()
        applier = ServingStateApplier(inference, serving_producer, deploy)
        tasks.append(asyncio.create_task(applier.run(stop), name="serving-state"))
        ingest = IngestService(
            IngestSettings(kafka=k, clickhouse=clickhouse_as("argus_ingest"), group_id="ingest-" + uuid.uuid4().hex[:6])
        )
        await asyncio.to_thread(migrations.apply, get_client(clickhouse_settings, database="default"), db)
        tasks.append(asyncio.create_task(ingest.run(stop, health=False), name="ingest"))
        # the people and the pipeline sign with their own keys (the retraining service's is the stack's)
        for name, roles in (("ops", ["operator", "pipeline"]), ("jane.sre", ["approver"]), ("pipeline", ["pipeline"])):
            await cli(k, "identity", "init", "--name", name, *[a for r in roles for a in ("--role", r)])
        gguf = packaged_model_path()
        await cli(
            k,
            "models",
            "register",
            MODEL,
            "v1",
            str(gguf),
            "--status",
            "active",
            "--by",
            "ops",
            "--card",
            "owner=ml-platform",
        )

        # baseline traffic, answered by v1 (the holdout), then the drift worker's reference
        rng = random.Random(11)
        profile = LoadProfile(drift="topic")
        async with ArgusProducer(k) as p:
            for _ in range(8):
                await p.request(
                    [{"role": "user", "content": make_prompt(profile, rng, False)}], tenant="acme", max_tokens=8
                )
        await until(
            lambda: (
                ch.query(f"SELECT count() FROM {db}.inference_responses WHERE status = 'ok'").result_rows[0][0] >= 8
            ),
            120,
            "8 answers by v1 in ClickHouse",
        )
        # the bridge keeps running; the drift traffic below carries an expired deadline, so it is answered at once
        # (deadline_exceeded) instead of queueing 460 generations on two cores

        procs.append(
            worker(
                "services.drift",
                "DRIFT",
                k,
                {
                    "ARGUS_DRIFT_APP_ID": "drift-" + uuid.uuid4().hex[:6],
                    "ARGUS_DRIFT_SEMANTIC__MAX_PER_S": "1000",
                    "ARGUS_DRIFT_SEMANTIC__QUEUE": "1000",
                },
                "retrain-drift",
            )
        )
        procs.append(
            worker(
                "services.alerting",
                "ALERTING",
                k,
                {
                    "ARGUS_ALERTING_APP_ID": "alerting-" + uuid.uuid4().hex[:6],
                    "ARGUS_ALERTING_CONFIG_FILE": str(alerting_config(tmp_path / "alerting.yaml", alerts_rx.port)),
                    "ARGUS_ALERTING_HEALTH__PORT": str(free_port()),
                },
                "retrain-alerting",
            )
        )
        rs = RetrainingSettings(
            kafka=k,
            clickhouse=clickhouse_as("argus_retraining"),
            group_id="retraining-" + uuid.uuid4().hex[:6],
            webhook_secrets={"pipeline": SECRET},
        )
        service = RetrainingService(rs, load_config(retraining_config(pipeline.port)))
        tasks.append(asyncio.create_task(service.run(asyncio.Event(), health=False), name="retraining"))

        async with ArgusProducer(k) as p:
            for i in range(460):
                drifted = i >= 300
                await p.request(
                    [{"role": "user", "content": make_prompt(profile, rng, drifted)}],
                    tenant="acme",
                    deadline_s=-1.0,
                    metadata={"loadgen_phase": "drift" if drifted else "baseline"},
                )
            await p.flush()

        # drift -> alert -> trigger awaiting approval, with its evidence
        try:
            trig = await until(
                lambda: [t for t in service.book.triggers.values() if t.policy == "drift-alert"],
                240,
                "a trigger from the drift alert",
            )
        except AssertionError:
            drift = ch.query(f"SELECT feature, detector, model_version FROM {db}.drift_events").result_rows
            alerts = ch.query(f"SELECT rule, status, labels FROM {db}.alerts").result_rows
            raise AssertionError(f"no trigger: drift events {drift}, alerts {alerts}, book {service.book.triggers}")
        t = trig[0]
        await until(lambda: t.state == "awaiting_approval", 30, "the trigger to await approval")
        assert t.model == MODEL and t.model_version == "v1" and t.alert_event_ids
        assert int(t.dataset_spec["rows"]) >= 8 and t.dataset_spec["model_version"] == "v1"
        shown = await cli(k, "retrain", "show", t.trigger_id[:8])
        assert "awaiting_approval" in shown and "DriftDetected" in shown
        assert pipeline.requests == [], "dispatched before approval"

        # forged records on the triggers topic are refused, dead-lettered with the reason and alerted on
        await forge_and_expect_refusals(k, ch, db, service, t, governance / "keys", alerts_rx)
        assert service.book.triggers[t.trigger_id].state == "awaiting_approval"
        assert pipeline.requests == [], "a forged record dispatched a job"

        # approved from the CLI -> the job reaches the pipeline, which registers a candidate
        await cli(k, "retrain", "approve", t.trigger_id[:8], "--by", "jane.sre", "--comment", "data window looks right")
        job = await until(lambda: pipeline.delivered(), 60, "the job at the pipeline receiver")
        body = job[0]["json"]
        assert body["job"]["state"] == "dispatched" and body["job"]["trigger_id"] == t.trigger_id
        assert body["evidence"]["alert_event_ids"] == t.alert_event_ids and body["dataset_spec"]["rows"]
        v2 = tmp_path / "v2.gguf"
        shutil.copyfile(gguf, v2)  # "retrained": the same weights under a new version
        await cli(
            k,
            "models",
            "register",
            MODEL,
            "v2",
            str(v2),
            "--trigger",
            t.trigger_id,
            "--parent",
            "v1",
            "--by",
            "pipeline",
            "--card",
            "data_from=" + body["dataset_spec"]["from"],
        )

        # validated on the ClickHouse holdout, canary at 10 %, promoted after 4 clean seconds
        await until(lambda: service.book.triggers[t.trigger_id].state == "canary", 180, "canary")
        routing = await asyncio.to_thread(lambda: serve.get_app_handle(inference.app_name).routing.remote().result())
        assert routing["weights"] == {"v1": 90.0, "v2": 10.0}, routing
        await until(lambda: service.book.triggers[t.trigger_id].state == "promoted", 120, "promotion")
        routing = await asyncio.to_thread(lambda: serve.get_app_handle(inference.app_name).routing.remote().result())
        assert routing["weights"] == {"v2": 100.0}, routing
        versions = {(r["version"]): r["status"] for r in json.loads(await cli(k, "models", "list", "--json"))}
        assert versions == {"v1": "deprecated", "v2": "active"}

        # run 2: a business-metric policy; the first trigger is rejected, nothing is dispatched
        async with ArgusProducer(k) as p:
            await p.feedback(str(uuid.uuid4()), tenant="acme", kind="label", label="wrong")
            await p.flush()
        first = await until(
            lambda: [x for x in service.book.triggers.values() if x.policy == "quality"], 60, "metric trigger"
        )
        assert first[0].model_version == "v2"
        await until(lambda: service.book.triggers[first[0].trigger_id].state == "awaiting_approval", 30, "awaiting")
        await cli(
            k, "retrain", "reject", first[0].trigger_id[:8], "--by", "jane.sre", "--comment", "not during the sale"
        )
        second = await until(
            lambda: [
                x
                for x in service.book.triggers.values()
                if x.policy == "quality" and x.open and x.trigger_id != first[0].trigger_id
            ],
            60,
            "the next metric trigger",
        )
        assert len(pipeline.delivered()) == 1, "the rejected trigger dispatched a job"
        await until(lambda: service.book.triggers[second[0].trigger_id].state == "awaiting_approval", 30, "awaiting")
        await cli(k, "retrain", "approve", second[0].trigger_id[:8], "--by", "jane.sre")
        await until(lambda: len(pipeline.delivered()) == 2, 60, "the second job")
        v3 = tmp_path / "v3.gguf"
        shutil.copyfile(gguf, v3)
        await cli(
            k,
            "models",
            "register",
            MODEL,
            "v3",
            str(v3),
            "--trigger",
            second[0].trigger_id,
            "--parent",
            "v2",
            "--by",
            "pipeline",
        )
        await until(lambda: service.book.triggers[second[0].trigger_id].state == "canary", 180, "second canary")
        # the canary's answers fail: the alerting service's error-rate alert for v3 rolls it back
        codec, producer = get_codec("inference-responses"), make_producer(k)
        await producer.start()
        for _ in range(10):
            rid = str(uuid.uuid4())
            await producer.send(
                k.topic("inference-responses"),
                codec.encode(
                    {
                        "request_id": rid,
                        "response_id": str(uuid.uuid4()),
                        "model": MODEL,
                        "response_model": "v3.gguf",
                        "model_version": "v3",
                        "tenant": "acme",
                        "latency_ms": 3.0,
                        "status": "error",
                        "error_type": "EngineError",
                        "served_at": int(time.time() * 1000),
                    }
                ),
                key=rid.encode(),
            )
        await producer.stop()
        await until(lambda: service.book.triggers[second[0].trigger_id].state == "rolled_back", 120, "rollback")
        routing = await asyncio.to_thread(lambda: serve.get_app_handle(inference.app_name).routing.remote().result())
        assert routing["weights"] == {"v2": 100.0}, routing

        # a tampered artifact is refused at the gate
        third = await until(
            lambda: [x for x in service.book.triggers.values() if x.policy == "quality" and x.open],
            60,
            "a third metric trigger",
        )
        await until(lambda: service.book.triggers[third[0].trigger_id].state == "awaiting_approval", 30, "awaiting")
        await cli(k, "retrain", "approve", third[0].trigger_id[:8], "--by", "jane.sre")
        await until(lambda: len(pipeline.delivered()) == 3, 60, "the third job")
        v4 = tmp_path / "v4.gguf"
        shutil.copyfile(gguf, v4)
        with open(v4, "r+b") as f:  # tampered in storage after the pipeline built it
            f.seek(4096)
            f.write(b"\x00" * 16)
        await cli(
            k,
            "models",
            "register",
            MODEL,
            "v4",
            str(v4),
            "--trigger",
            third[0].trigger_id,
            "--by",
            "pipeline",
            "--sha256",
            sha256_of(gguf),
        )
        await until(lambda: service.book.triggers[third[0].trigger_id].state == "validation_failed", 120, "refusal")
        last = service.book.triggers[third[0].trigger_id].history[-1]["comment"]
        assert "does not match the registered digest" in last, last

        # every transition, in order, in ClickHouse
        expected = {
            t.trigger_id: [
                "proposed",
                "awaiting_approval",
                "approved",
                "dispatched",
                "candidate_registered",
                "validated",
                "canary",
                "promoted",
            ],
            first[0].trigger_id: ["proposed", "awaiting_approval", "rejected"],
            second[0].trigger_id: [
                "proposed",
                "awaiting_approval",
                "approved",
                "dispatched",
                "candidate_registered",
                "validated",
                "canary",
                "rolled_back",
            ],
            third[0].trigger_id: [
                "proposed",
                "awaiting_approval",
                "approved",
                "dispatched",
                "candidate_registered",
                "validation_failed",
            ],
        }

        def logged() -> bool:
            got = states(ch, db)
            return all([s for tid, _, s in got if tid == key] == want for key, want in expected.items())

        await until(logged, 60, "every transition in ClickHouse")

        # every step of every trigger is in the audit trail, in order, by who signed it; the
        # forged records too; and the trail verifies against the topic
        def audited(tid: str) -> list[tuple[str, str]]:
            return [
                (r[0], r[1])
                for r in ch.query(
                    f"SELECT action, actor FROM {db}.audit_log WHERE subject = {{s:String}} ORDER BY chain_seq",
                    parameters={"s": tid},
                ).result_rows
            ]

        for tid, want in expected.items():
            await until(lambda: [a for a, _ in audited(tid)] == [f"trigger.{s}" for s in want], 60, f"{tid} audited")
        assert ("trigger.approved", "jane.sre") in audited(t.trigger_id)
        assert ("trigger.rejected", "jane.sre") in audited(first[0].trigger_id)
        refused = ch.query(
            f"SELECT groupArray(detail['kind']) FROM {db}.audit_log WHERE action = 'governance.refused'"
        ).result_rows[0][0]
        assert sorted(refused) == ["bad_signature", "unsigned", "wrong_role", "wrong_role"], refused
        verified = await cli(
            k, "audit", "verify", env={"ARGUS_CLI_CLICKHOUSE__DSN": clickhouse_settings.dsn.get_secret_value()}
        )
        assert "every chain intact" in verified, verified
        for key in expected:
            seqs = [seq for tid, seq, _ in states(ch, db, key)]
            assert seqs == list(range(1, len(seqs) + 1))
        assert ch.query(
            f"SELECT groupArray(status) FROM (SELECT status FROM {db}.model_registry FINAL WHERE version = 'v3' "
            "ORDER BY occurred_at)"
        ).result_rows[0][0] == ["candidate", "canary", "rejected"]
        assert pipeline.bad_signatures == 0

        # every traffic change was asked for and acknowledged as a serving-state record, in ClickHouse
        def serving() -> list[tuple]:
            return [
                tuple(r)
                for r in ch.query(
                    f"SELECT revision, status, arrayMap(v -> (v.1, v.2), versions), trigger_id FROM {db}.serving_state FINAL "
                    "WHERE model = {m:String} ORDER BY revision, occurred_at",
                    parameters={"m": MODEL},
                ).result_rows
            ]

        def changes_logged() -> bool:
            return [(r[0], r[1]) for r in serving()] == [
                (0, "applied"),
                (1, "desired"),
                (1, "applied"),
                (2, "desired"),
                (2, "applied"),
                (3, "desired"),
                (3, "applied"),
                (4, "desired"),
                (4, "applied"),
            ]

        await until(changes_logged, 60, "the serving states in ClickHouse")
        rows = serving()
        assert rows[2][2] == [("v1", 90.0), ("v2", 10.0)] and rows[2][3] == t.trigger_id  # canary
        assert rows[4][2] == [("v2", 100.0)]  # promotion
        assert rows[8][2] == [("v2", 100.0)] and rows[8][3] == second[0].trigger_id  # rollback of v3

        await retire_v1(k, ch, db, service, governance / "keys")
    finally:
        stop.set()
        for task in tasks:
            if task.get_name() == "retraining":
                task.cancel()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pipeline.stop()
        await alerts_rx.stop()
        if "serving_producer" in locals():
            await serving_producer.stop()
        ch.close()
