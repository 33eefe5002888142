"""Deployment artifacts, checked offline: the Helm chart lints and renders into valid
Kubernetes manifests; docker-compose.yml validates against the compose-spec schema."""

from __future__ import annotations

import json

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

CHART = REPO / "deploy" / "helm" / "argus"
COMPOSE_SCHEMA = REPO / ".argus" / "cache" / "compose-spec.json"


def render(values: dict | None = None) -> list[dict]:
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values or {}, name="argus", namespace="llmops")
    docs = []
    for text in out.values():
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def test_chart_lints_without_errors() -> None:
    result = helm_python.lint(str(CHART))
    assert result["errors"] == []
    assert not [m for m in result["messages"] if m["severity"] >= 3], result["messages"]


@pytest.mark.parametrize("values", [{}, {"clickhouse": {"existingSecret": "ch-creds"}}])
def test_rendered_manifests_are_valid_kubernetes(values: dict) -> None:
    docs = render(values)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33", strict=True)
    kinds = {d["kind"] for d in docs}
    assert "Job" in kinds
    assert ("Secret" in kinds) == (not values)


def test_pods_run_as_non_root_with_secrets_from_a_secret_and_probes() -> None:
    workloads = [d for d in render() if d["kind"] in ("Job", "Deployment")]
    assert {d["kind"] for d in workloads} == {"Job", "Deployment"}
    names = {d["metadata"]["name"] for d in workloads}
    assert {
        "argus-argus-inference",
        "argus-argus-ingest",
        "argus-argus-drift",
        "argus-argus-alerting",
        "argus-argus-retraining",
    } <= names, names
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["resources"]["limits"]
            dsn = [e for e in c["env"] if e["name"].endswith("CLICKHOUSE__DSN")][0]
            assert "valueFrom" in dsn and "value" not in dsn
            if doc["kind"] == "Deployment":
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
                # Prometheus scrapes /metrics on the port the probes use
                notes = doc["spec"]["template"]["metadata"]["annotations"]
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                assert notes["prometheus.io/scrape"] == "true"
                assert int(notes["prometheus.io/port"]) == ports[c["readinessProbe"]["httpGet"]["port"]], doc[
                    "metadata"
                ]["name"]


def test_services_are_switched_on_and_sized_from_values() -> None:
    off = [d["metadata"]["name"] for d in render({"inference": {"enabled": False}}) if d["kind"] == "Deployment"]
    assert not any(name.endswith("-inference") for name in off)
    gpu = [
        d
        for d in render({"inference": {"engine": {"kind": "vllm", "numGpus": 1}}})
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-inference")
    ]
    container = gpu[0]["spec"]["template"]["spec"]["containers"][0]
    assert "argus-gpu" in container["image"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ARGUS_INFERENCE_ENGINE__KIND"] == "vllm" and env["ARGUS_INFERENCE_ENGINE__NUM_GPUS"] == "1"
    import json as _json

    assert _json.loads(env["ARGUS_INFERENCE_VERSIONS"]) == [{"version": "v1", "weight": 100}]


def test_docker_compose_is_valid_against_the_compose_spec() -> None:
    assert COMPOSE_SCHEMA.exists(), "run scripts/setup.sh: it fetches the compose-spec schema from npm"
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    jsonschema.validate(compose, schema, cls=jsonschema.Draft7Validator)
    assert compose["services"]["argus-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for svc in ("kafka", "clickhouse"):
        assert all(p.startswith("127.0.0.1:") for p in compose["services"][svc]["ports"]), "bind to loopback"


def test_alerting_config_map_is_the_shipped_config_and_valid() -> None:
    from services.alerting.config import load_config

    docs = render()
    from services.retraining.config import load_config as load_policies

    rcm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-retraining")][0]
    load_policies(yaml.safe_load(rcm["data"]["retraining.yaml"]))
    cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-alerting")][0]
    cfg = yaml.safe_load(cm["data"]["alerting.yaml"])
    assert cfg == yaml.safe_load((CHART / "files" / "alerting.yaml").read_text())
    load_config(cfg)
    custom = {"rules": [], "route": {"receiver": "r"}, "receivers": [{"name": "r"}]}
    cm = [
        d
        for d in render({"alerting": {"config": custom}})
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-alerting")
    ][0]
    assert yaml.safe_load(cm["data"]["alerting.yaml"]) == custom
