"""Deployment artifacts, checked offline: the Helm chart lints and renders into valid
Kubernetes manifests; docker-compose.yml validates against the compose-spec schema."""

from __future__ import annotations

import json
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

CHART = REPO / "deploy" / "helm" / "argus"
COMPOSE_SCHEMA = REPO / ".argus" / "cache" / "compose-spec.json"


# the chart has no default credentials: every render names one Secret per ClickHouse user
CH_USERS = ("admin", "ingest", "retraining")
SECRETS = {
    "clickhouse": {"users": {u: {"existingSecret": f"ch-{u}"} for u in CH_USERS}},
    "kafka": {"caSecret": {"name": "kafka-cluster-ca-cert"}},
    "keys": {"existingSecret": "argus-subject-keys", "tls": {"secretName": "argus-keys-tls"}},
    "governance": {"trustSecret": "argus-governance-trust", "retrainingKeySecret": "argus-retraining-key"},
    "alerting": {"rulesSignatureSecret": "argus-alerting-rules-signature"},
    "retraining": {"policiesSignatureSecret": "argus-retraining-policies-signature"},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(values: dict | None = None, base: dict | None = None) -> list[dict]:
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(_merge(SECRETS if base is None else base, values or {}), name="argus", namespace="llmops")
    docs = []
    for text in out.values():
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def test_chart_lints_without_errors() -> None:
    result = helm_python.lint(str(CHART))
    assert result["errors"] == []
    assert not [m for m in result["messages"] if m["severity"] >= 3], result["messages"]


INLINE = {
    "clickhouse": {"users": {u: {"dsn": f"http://argus_{u}:pw@ch:8123/argus"} for u in CH_USERS}},
    "kafka": SECRETS["kafka"],
    "keys": SECRETS["keys"],
    "governance": SECRETS["governance"],
    "alerting": SECRETS["alerting"],
    "retraining": SECRETS["retraining"],
}


@pytest.mark.parametrize("values", [SECRETS, INLINE])
def test_rendered_manifests_are_valid_kubernetes(values: dict) -> None:
    docs = render(base=values)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33", strict=True)
    kinds = {d["kind"] for d in docs}
    assert "Job" in kinds
    secrets = sorted(
        d["metadata"]["name"] for d in docs if d["kind"] == "Secret" and "clickhouse" in d["metadata"]["name"]
    )
    assert secrets == ([] if values is SECRETS else [f"argus-argus-clickhouse-{u}" for u in CH_USERS])


@pytest.mark.parametrize("missing", CH_USERS)
def test_the_chart_refuses_to_render_without_clickhouse_credentials(missing: str) -> None:
    values = _merge(SECRETS, {"clickhouse": {"users": {missing: {"existingSecret": ""}}}})
    with pytest.raises(Exception, match=f"clickhouse.users.{missing}"):
        render(base=values)


def test_each_pod_gets_only_its_own_clickhouse_user_and_the_others_none() -> None:
    want = {"ingest": "ch-ingest", "retraining": "ch-retraining", "bootstrap": "ch-admin"}
    for doc in render():
        if doc["kind"] not in ("Job", "Deployment"):
            continue
        role = doc["metadata"]["name"].removeprefix("argus-argus-")
        for c in doc["spec"]["template"]["spec"]["containers"]:
            dsn = [
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in c.get("env", [])
                if e["name"].endswith("CLICKHOUSE__DSN")
            ]
            assert dsn == ([want[role]] if role in want else []), role


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
            for dsn in (e for e in c["env"] if e["name"].endswith("CLICKHOUSE__DSN")):
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


def test_docker_compose_has_no_default_secrets() -> None:
    """Every credential in compose is required (``${VAR:?…}``): it refuses to start without
    them rather than run with a password anyone can read here."""
    import re

    text = (REPO / "docker-compose.yml").read_text()
    defaults = re.findall(r"\$\{(\w*(?:PASSWORD|SECRET|KEY)\w*):-", text)
    assert not defaults, defaults
    assert (
        "CLICKHOUSE_ARGUS_INGEST_PASSWORD_SHA256:?" in text
        and "argus_ingest:${CLICKHOUSE_ARGUS_INGEST_PASSWORD:?" in text
    )


def test_every_pod_authenticates_to_kafka_as_its_own_principal_over_tls() -> None:
    want = {
        "ingest": "argus-ingest",
        "drift": "argus-drift",
        "alerting": "argus-alerting",
        "retraining": "argus-retraining",
        "inference": "argus-inference",
        "bootstrap": "argus-admin",
    }
    seen = set()
    for doc in render():
        if doc["kind"] not in ("Job", "Deployment"):
            continue
        role = doc["metadata"]["name"].removeprefix("argus-argus-")
        pod = doc["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"].split("_KAFKA__")[-1]: e.get("value") for e in c["env"] if "_KAFKA__" in e["name"]}
        if role == "keys":  # the key service talks to no broker, and holds no Kafka secret
            assert not env and not any("kafka" in v["name"] for v in pod["volumes"])
            continue
        assert env["SECURITY_PROTOCOL"] == "SASL_SSL" and env["SASL_MECHANISM"] == "SCRAM-SHA-512", role
        assert env["SASL_USERNAME"] == want[role] and env["SASL_PASSWORD_FILE"] == "/etc/argus/kafka/password"
        assert "SASL_PASSWORD" not in env  # from the mounted Secret only
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["kafka-password"]["secret"]["secretName"] == want[role]
        assert volumes["kafka-ca"]["secret"]["secretName"] == "kafka-cluster-ca-cert"
        assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/etc/argus/kafka", "/etc/argus/kafka-ca"}
        seen.add(role)
    assert seen == set(want)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"kafka": {"securityProtocol": "PLAINTEXT"}}, "SASL_SSL is required"),
        ({"kafka": {"caSecret": {"name": ""}}}, "kafka.caSecret.name"),
        ({"kafka": {"strimzi": {"enabled": True}}}, "kafka.strimzi.cluster"),
    ],
)
def test_the_chart_refuses_insecure_or_incomplete_kafka_settings(values: dict, message: str) -> None:
    with pytest.raises(Exception, match=message):
        render(values)


def crds_dir() -> Path:
    """The upstream CRDs (data kept beside the checkout in ``../shared/crds``, not copied
    into the project); ``ARGUS_CRDS_DIR`` points elsewhere."""
    import os

    for candidate in (os.environ.get("ARGUS_CRDS_DIR"), REPO.parent / "shared" / "crds", "/work/shared/crds"):
        if candidate and (Path(candidate) / "strimzi.kafkausers.yaml").exists():
            return Path(candidate)
    pytest.skip("the Strimzi CRD is not beside this checkout (../shared/crds); set ARGUS_CRDS_DIR")


def test_kafka_users_are_the_registry_plan_and_valid_strimzi_resources() -> None:
    from services.common import kafka_acl

    committed = yaml.safe_load((CHART / "files" / "kafka-acls.yaml").read_text())
    assert committed == kafka_acl.strimzi_acls(kafka_acl.plan()), "run `argus acl plan --strimzi`"
    crd = yaml.safe_load((crds_dir() / "strimzi.kafkausers.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = version["schema"]["openAPIV3Schema"]
    users = [
        d
        for d in render({"kafka": {"topicPrefix": "prod.", "strimzi": {"enabled": True, "cluster": "main"}}})
        if d["kind"] == "KafkaUser"
    ]
    assert {u["metadata"]["name"] for u in users} == set(kafka_acl.load_principals()) | {"argus-admin"}
    for user in users:
        jsonschema.validate(user, schema)
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "main"
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    drift = next(u for u in users if u["metadata"]["name"] == "argus-drift")
    names = {a["resource"].get("name") for a in drift["spec"]["authorization"]["acls"]}
    assert (
        "prod.argus.drift.events" in names and "prod.argus-drift" in names and "argus-drift" in names
    )  # group unprefixed


def test_kafka_topics_are_the_registry_with_production_replication_and_valid_strimzi_resources() -> None:
    from services.common.registry import default_registry, strimzi_topics

    committed = yaml.safe_load((CHART / "files" / "kafka-topics.yaml").read_text())
    assert committed == strimzi_topics(), "run `argus topics plan --strimzi`"
    crd = yaml.safe_load((crds_dir() / "strimzi.kafkatopics.yaml").read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    topics = [
        d
        for d in render({"kafka": {"topicPrefix": "prod.", "strimzi": {"enabled": True, "cluster": "main"}}})
        if d["kind"] == "KafkaTopic"
    ]
    reg = default_registry()
    assert {t["spec"]["topicName"] for t in topics} == {"prod." + s.name for s in reg.topics.values()}
    for topic in topics:
        jsonschema.validate(topic, schema)
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "main"
        assert topic["spec"]["replicas"] == 3 and topic["spec"]["config"]["min.insync.replicas"] == "2"
    audit = next(t for t in topics if t["spec"]["topicName"] == "prod.argus.audit")
    assert audit["spec"]["config"]["retention.ms"] == "-1" and audit["spec"]["partitions"] == 1
    assert not [d for d in render() if d["kind"] == "KafkaTopic"]  # only with Strimzi


def test_every_pod_creates_topics_with_the_registry_replication_unless_told_one_broker() -> None:
    def replication(docs: list[dict]) -> set[str]:
        return {
            e["value"]
            for d in docs
            if d["kind"] in ("Deployment", "Job", "CronJob")
            for c in _containers(d)
            for e in c.get("env", [])
            if e["name"].endswith("_KAFKA__REPLICATION")
        }

    assert replication(render()) == {"registry"}
    assert replication(render({"kafka": {"replication": "single-broker"}})) == {"single-broker"}


def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"] if doc["kind"] == "CronJob" else spec["template"]["spec"]
    return pod.get("containers", []) + pod.get("initContainers", [])


def _policies(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"].removeprefix("argus-argus-"): d for d in docs if d["kind"] == "NetworkPolicy"}


def _selects(policy: dict, component: str) -> bool:
    sel = policy["spec"]["podSelector"]
    if sel.get("matchLabels", {}).get("app.kubernetes.io/component") not in (None, component):
        return False
    for e in sel.get("matchExpressions", []):
        if e["key"] == "app.kubernetes.io/component" and (component in e["values"]) != (e["operator"] == "In"):
            return False
    return sel.get("matchLabels", {}).get("app.kubernetes.io/instance") == "argus" or any(
        e["key"] == "app.kubernetes.io/instance" and "argus" in e["values"] for e in sel.get("matchExpressions", [])
    )


def _egress_ports(docs: list[dict], component: str) -> set[int]:
    ports = set()
    for p in _policies(docs).values():
        if _selects(p, component):
            for rule in p["spec"].get("egress", []):
                ports |= {x["port"] for x in rule.get("ports", [])}
    return ports


def test_network_policies_deny_by_default_and_allow_only_the_needed_flows() -> None:
    docs = render()
    policies = _policies(docs)
    deny = policies["default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    components = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    }
    assert components == {"bootstrap", "inference", "ingest", "drift", "alerting", "retraining", "keys"}
    assert _selects(policies["default-deny"], "keys") and _egress_ports(docs, "keys") == set()  # no egress at all
    for c in components - {"keys"}:
        assert _selects(policies["default-deny"], c)
        ports = _egress_ports(docs, c)
        assert {53, 9093} <= ports, c  # DNS and Kafka for everyone
        assert (8123 in ports) == (c in ("bootstrap", "ingest", "retraining")), c  # only DSN holders
        assert (443 in ports) == (c in ("alerting", "retraining")), c  # only webhook senders
    ingress = {
        c: {
            x["port"]
            for p in policies.values()
            if _selects(p, c)
            for r in p["spec"].get("ingress", [])
            for x in r["ports"]
        }
        for c in components
    }
    assert ingress["inference"] == {8000, 9400} and ingress["alerting"] == {9095}
    assert ingress["bootstrap"] == set() and ingress["ingest"] == {9400} and ingress["keys"] == {8129}
    # the alerting API is not open to the world when nobody is named
    without = _policies(render({"networkPolicy": {"monitoring": []}}))
    (rule,) = without["alerting-ingress"]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "argus"}}}]
    assert not _policies(render({"networkPolicy": {"enabled": False}}))


def test_the_key_service_needs_its_secret_and_the_migration_job_points_clickhouse_at_it() -> None:
    with pytest.raises(Exception, match="keys.existingSecret"):
        render({"keys": {"existingSecret": ""}})
    docs = render()
    job = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in job["containers"][0]["env"]}
    assert env["ARGUS_PRIVACY_KEYS_URL"] == "https://argus-argus-keys:8129"
    (token,) = [v for v in job["volumes"] if v["name"] == "keys-token"]
    assert token["secret"]["items"] == [{"key": "dictionary-token", "path": "dictionary-token"}]  # not the master key
    assert env["ARGUS_RETENTION_FILE"] == "/etc/argus/retention/retention.yaml"
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "argus-argus-retention"]
    shipped = yaml.safe_load((CHART / "files" / "retention.yaml").read_text())
    assert yaml.safe_load(cm["data"]["retention.yaml"]) == shipped
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert job["containers"][0]["command"] == ["argus", "privacy", "expire-texts"]
    assert _egress_ports(docs, "privacy") >= {8123} and _selects(_policies(docs)["default-deny"], "privacy")
    keys = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "argus-argus-keys")
    assert keys["spec"]["replicas"] == 1 and keys["spec"]["strategy"] == {"type": "Recreate"}
    pod = keys["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"store", "secrets", "tls"}
    container = pod["containers"][0]
    assert all(e.get("value", "").startswith("/") or not e["name"].endswith("_FILE") for e in container["env"])
    # HTTPS from a kubernetes.io/tls Secret; the probes speak it, the admin client checks it
    kenv = {e["name"]: e.get("value") for e in container["env"]}
    assert kenv["ARGUS_KEYS_TLS_CERT_FILE"] == "/etc/argus/keys-tls/tls.crt"
    assert kenv["ARGUS_PRIVACY_KEYS_CA_FILE"] == "/etc/argus/keys-tls/ca.crt"
    assert (
        kenv["ARGUS_PRIVACY_KEYS_URL"] == "https://argus-argus-keys:8129" and "ARGUS_KEYS_ALLOW_PLAINTEXT" not in kenv
    )
    assert (
        container["livenessProbe"]["httpGet"]["scheme"] == container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    )
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]
    assert tls["secretName"] == "argus-keys-tls" and {i["key"] for i in tls["items"]} == {
        "tls.crt",
        "tls.key",
        "ca.crt",
    }
    # no TLS: refused, unless plain HTTP is asked for (behind a mesh), which says so
    with pytest.raises(Exception, match="keys.tls.secretName"):
        render({"keys": {"tls": {"secretName": ""}}})
    plain = render({"keys": {"tls": {"secretName": "", "plaintext": True}}})
    keys = next(d for d in plain if d["kind"] == "Deployment" and d["metadata"]["name"] == "argus-argus-keys")
    kenv = {e["name"]: e.get("value") for e in keys["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (
        kenv["ARGUS_KEYS_ALLOW_PLAINTEXT"] == "true"
        and kenv["ARGUS_PRIVACY_KEYS_URL"] == "http://argus-argus-keys:8129"
    )
    assert not [
        d for d in render({"keys": {"enabled": False, "existingSecret": ""}}) if "keys" in d["metadata"]["name"]
    ]


def test_alerting_and_retraining_start_only_with_signed_rules_and_policies_unless_a_demo_allows_others() -> None:
    with pytest.raises(Exception, match="alerting.rulesSignatureSecret"):
        render({"alerting": {"rulesSignatureSecret": ""}})

    def alerting(docs: list) -> dict:
        dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "argus-argus-alerting")
        return dep["spec"]["template"]["spec"]

    pod = alerting(render())
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["ARGUS_ALERTING_CONFIG_SIGNATURE_FILE"] == "/etc/argus/rules-signature/alerting.yaml.sig"
    assert env["ARGUS_ALERTING_ALLOW_UNSIGNED_RULES"] == "false"
    assert env["ARGUS_GOVERNANCE_TRUST_FILE"] == "/etc/argus/governance/trust/trust.yaml"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["rules-signature"]["secret"]["secretName"] == "argus-alerting-rules-signature"
    demo = alerting(render({"alerting": {"rulesSignatureSecret": ""}, "governance": {"allowUnsignedRules": True}}))
    env = {e["name"]: e.get("value") for e in demo["containers"][0]["env"]}
    assert env["ARGUS_ALERTING_ALLOW_UNSIGNED_RULES"] == "true" and "ARGUS_ALERTING_CONFIG_SIGNATURE_FILE" not in env
    with pytest.raises(Exception, match="retraining.policiesSignatureSecret"):
        render({"retraining": {"policiesSignatureSecret": ""}})
    dep = next(d for d in render() if d["metadata"]["name"] == "argus-argus-retraining" and d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ARGUS_RETRAINING_CONFIG_SIGNATURE_FILE"] == "/etc/argus/policies-signature/retraining.yaml.sig"


def test_the_retraining_service_mounts_the_trust_file_and_its_own_key_only() -> None:
    for missing in ("trustSecret", "retrainingKeySecret"):
        with pytest.raises(Exception, match=f"governance.{missing}"):
            render({"governance": {missing: ""}})
    docs = render()
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "argus-argus-retraining")
    pod = dep["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["ARGUS_GOVERNANCE_TRUST_FILE"] == "/etc/argus/governance/trust/trust.yaml"
    assert env["ARGUS_GOVERNANCE_SIGNING_KEY_FILE"] == "/etc/argus/governance/key/signing-key.pem"
    assert env["ARGUS_GOVERNANCE_ALLOW_UNSIGNED_ARTIFACTS"] == "false"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["governance-key"]["secret"] == {
        "secretName": "argus-retraining-key",
        "defaultMode": 0o400,
        "items": [{"key": "signing-key.pem", "path": "signing-key.pem"}],
    }
    assert volumes["governance-trust"]["secret"]["secretName"] == "argus-governance-trust"
    ingest = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "argus-argus-ingest")
    ingest_pod = ingest["spec"]["template"]["spec"]
    assert {v["name"] for v in ingest_pod["volumes"]} >= {"governance-trust"}
    assert "governance-key" not in {v["name"] for v in ingest_pod["volumes"]}  # only the retraining service signs
    without = render({"retraining": {"enabled": False}, "governance": {"retrainingKeySecret": ""}})
    assert not [d for d in without if "retraining" in d["metadata"]["name"] and d["kind"] == "Deployment"]


def test_the_http_apis_get_their_key_file_and_token_from_secrets() -> None:
    docs = render({"inference": {"http": {"apiKeysSecret": "argus-api-keys"}}, "alerting": {"apiTokenSecret": "tok"}})
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}
    inf, alert = pods["argus-argus-inference"], pods["argus-argus-alerting"]
    env = {e["name"]: e.get("value") for e in inf["containers"][0]["env"]}
    assert env["ARGUS_INFERENCE_HTTP_API_KEYS_FILE"] == "/etc/argus/api-keys/api-keys.json"
    assert {v["name"]: v for v in inf["volumes"]}["api-keys"]["secret"]["secretName"] == "argus-api-keys"
    env = {e["name"]: e.get("value") for e in alert["containers"][0]["env"]}
    assert env["ARGUS_ALERTING_API_TOKEN_FILE"] == "/etc/argus/api-token/api-token"
    # none given: no key file, no token (both APIs then refuse every call)
    docs = render()
    for d in docs:
        if d["kind"] == "Deployment":
            names = {e["name"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert not names & {"ARGUS_INFERENCE_HTTP_API_KEYS_FILE", "ARGUS_ALERTING_API_TOKEN_FILE"}


def test_compose_runs_kafka_with_sasl_ssl_and_each_service_gets_only_its_own_password() -> None:
    from services.stack.compose_kafka import broker_command

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    # the command tested against the real broker (tests/integration/test_compose_kafka.py)
    assert services["kafka"]["command"] == ["bash", "-c", broker_command().replace("$", "$$")]
    assert "PLAINTEXT" not in (REPO / "docker-compose.yml").read_text()
    for name in ("ingest", "drift", "alerting", "retraining", "inference"):
        svc = services[name]
        env = {k.split("KAFKA__", 1)[1]: v for k, v in svc["environment"].items() if "KAFKA__" in k}
        assert env["SECURITY_PROTOCOL"] == "SASL_SSL" and env["SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["SASL_USERNAME"] == f"argus-{name}" and env["SASL_PASSWORD_FILE"] == "/etc/argus/kafka/password"
        secrets = [v.split(":")[0] for v in svc["volumes"] if v.startswith("kafka-argus-")]
        assert secrets == [f"kafka-argus-{name}"], (name, secrets)  # its own password, nobody else's
        assert "kafka-broker" not in " ".join(svc["volumes"])
    # only the broker and the generator see the broker's key and the admin's password
    holders = {n for n, s in services.items() if any(str(v).startswith("kafka-broker:") for v in s.get("volumes", []))}
    assert holders == {"kafka", "kafka-secrets"}


def test_ray_runs_with_token_authentication_everywhere() -> None:
    (inf,) = [d for d in render() if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-inference")]
    pod = inf["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == "/var/run/ray-auth/token"
    (init,) = pod["initContainers"]
    assert "/var/run/ray-auth/token" in init["command"][-1] and "0o600" in init["command"][-1]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["inference"]["environment"]["RAY_AUTH_MODE"] == "token"
    text = (
        "\n".join(p.read_text() for p in (REPO / "services").rglob("*.py")) + (REPO / "scripts" / "test.sh").read_text()
    )
    assert '"RAY_AUTH_MODE": "disabled"' not in text and "RAY_AUTH_MODE=disabled\n" not in text


TRUST_FILE = "/etc/argus/governance/trust/trust.yaml"  # where every Ray node mounts the trust Secret
KUBERAY = {"inference": {"mode": "kuberay", "kuberay": {"authTokenSecret": "argus-ray-token"}}}


def _crd_schema(file: str, version: str) -> dict:
    crd = yaml.safe_load((crds_dir() / file).read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


def chart_serve_config(values: dict | None = None) -> str:
    """What `argus inference serve-config --trust-file …` prints for the ARGUS_INFERENCE_*
    settings the chart gives the single-pod inference container (``values`` over the
    defaults): the config the code applies for that chart."""
    import os

    from services.inference.applied import serve_config_v2
    from services.inference.settings import InferenceSettings

    (pod,) = [d for d in render(values) if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-inference")]
    env = {e["name"]: e["value"] for e in _containers(pod)[0]["env"] if "value" in e}
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("ARGUS_INFERENCE_")})
    try:
        return serve_config_v2(InferenceSettings(), TRUST_FILE)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_kuberay_mode_renders_a_valid_rayservice_whose_serve_config_is_what_the_code_applies() -> None:
    committed = (CHART / "files" / "serve-config.yaml").read_text()
    assert yaml.safe_load(committed) == yaml.safe_load(chart_serve_config()), (
        "regenerate files/serve-config.yaml: argus inference serve-config --trust-file " + TRUST_FILE
    )
    docs = render(KUBERAY)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("RayService") == 1
    (svc,) = [d for d in docs if d["kind"] == "RayService"]
    jsonschema.validate(svc, _crd_schema("kuberay.ray.io_rayservices.yaml", "v1"))
    for doc in docs:
        if doc["apiVersion"].split("/")[0] in ("apps", "v1", "batch", "policy", "autoscaling", "networking.k8s.io"):
            kubernetes_validate.validate(doc, "1.33", strict=True)
    assert yaml.safe_load(svc["spec"]["serveConfigV2"]) == yaml.safe_load(committed)
    app, *versions = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert [v["name"] for v in versions] == ["argus-inference.llm-v1"]  # each version an application of its own
    assert versions[0]["args"]["governance"] == {"allow_unsigned": False, "trust_file": TRUST_FILE}
    cluster = svc["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] and cluster["authOptions"] == {
        "mode": "token",
        "secretName": "argus-ray-token",
    }
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # replicas run on the workers
    (workers,) = cluster["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 4)
    assert "nvidia.com/gpu" not in workers["template"]["spec"]["containers"][0]["resources"]["limits"]  # CPU engine
    # the Router's HTTP route publishes to Kafka from any Ray pod: each mounts the password file and CA the
    # serve config's journal names, never the password itself
    journal = app["deployments"][0]["user_config"]["journal"]
    assert "sasl_password" not in journal
    for group in (cluster["headGroupSpec"], workers):
        mounts = {m["mountPath"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert {str(Path(journal["sasl_password_file"]).parent), str(Path(journal["ssl_cafile"]).parent)} <= mounts
    deployments = {d["metadata"]["name"].removeprefix("argus-argus-"): d for d in docs if d["kind"] == "Deployment"}
    assert "inference" not in deployments and {"bridge", "serving"} <= set(deployments)
    bridge, serving = (_containers(deployments[c])[0] for c in ("bridge", "serving"))
    assert bridge["command"][-1] == "bridge" and serving["command"][-1] == "states"
    address = {e["name"]: e.get("value") for e in bridge["env"]}["ARGUS_INFERENCE_RAY_ADDRESS"]
    assert address == "ray://argus-argus-inference-head-svc:10001"
    assert deployments["serving"]["spec"]["replicas"] == 1 and "replicas" not in deployments["bridge"]["spec"]
    policies = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert {"argus-argus-ray-cluster", "argus-argus-kuberay-operator"} <= policies
    with pytest.raises(Exception, match="authTokenSecret"):
        render({"inference": {"mode": "kuberay"}})


def test_kuberay_on_gpu_nodes_asks_for_gpus_and_carries_the_vllm_serve_config() -> None:
    from services.inference.gpu import gpu_serve_applications  # noqa: F401 - the GPU builders the config names

    gpu = {
        "engine": {"kind": "vllm", "numGpus": 1},
        "versions": [{"version": "v1", "weight": 100, "model_path": "/models/smollm2", "sha256": "a" * 64}],
    }
    config = chart_serve_config({"inference": gpu})
    values = _merge(
        KUBERAY,
        {
            "inference": {
                **gpu,
                "kuberay": {
                    "serveConfig": config,
                    "workers": {
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
                    },
                },
            }
        },
    )
    (svc,) = [d for d in render(values) if d["kind"] == "RayService"]
    jsonschema.validate(svc, _crd_schema("kuberay.ray.io_rayservices.yaml", "v1"))
    app, version = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "services.inference.gpu:gpu_app_builder"
    assert version["import_path"] == "services.inference.gpu:gpu_version_builder" and version["args"]["llm_config"]
    worker = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["containers"][0]["image"].startswith("ghcr.io/argus-llmops/argus-gpu:")
    assert worker["tolerations"][0]["key"] == "nvidia.com/gpu"
    with pytest.raises(Exception, match="serveConfig"):  # a vLLM engine never runs the CPU defaults
        render(_merge(KUBERAY, {"inference": gpu}))


def test_consumers_scale_on_lag_with_keda_and_on_cpu_without_it() -> None:
    keda = _merge(KUBERAY, {"autoscaling": {"keda": {"enabled": True}}})
    docs = render(keda)
    scaled = {d["metadata"]["name"].removeprefix("argus-argus-"): d for d in docs if d["kind"] == "ScaledObject"}
    auths = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    assert set(scaled) == {"bridge", "ingest", "drift"} and len(auths) == 3
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    so_schema = _crd_schema("keda.keda.sh_scaledobjects.yaml", "v1alpha1")
    ta_schema = _crd_schema("keda.keda.sh_triggerauthentications.yaml", "v1alpha1")
    for d in scaled.values():
        jsonschema.validate(d, so_schema)
    for d in auths:
        jsonschema.validate(d, ta_schema)
    kafka = {c: next(t for t in d["spec"]["triggers"] if t["type"] == "kafka") for c, d in scaled.items()}
    assert {c: t["metadata"]["consumerGroup"] for c, t in kafka.items()} == {
        "bridge": "argus-inference",
        "ingest": "argus-ingest",
        "drift": "argus-drift",
    }
    assert all(t["metadata"]["sasl"] == "scram_sha512" and t["metadata"]["tls"] == "enable" for t in kafka.values())
    ingest_auth = next(a for a in auths if a["metadata"]["name"] == "argus-argus-ingest-kafka")
    refs = {r["parameter"]: r["name"] for r in ingest_auth["spec"]["secretTargetRef"]}
    assert refs == {"password": "argus-ingest", "ca": "kafka-cluster-ca-cert"}  # its own principal, never the admin
    assert scaled["ingest"]["spec"]["maxReplicaCount"] == 3
    deployments = {d["metadata"]["name"].removeprefix("argus-argus-"): d for d in docs if d["kind"] == "Deployment"}
    assert all("replicas" not in deployments[c]["spec"] for c in scaled)  # the autoscaler owns them

    plain = render()
    hpas = {d["metadata"]["name"].removeprefix("argus-argus-") for d in plain if d["kind"] == "HorizontalPodAutoscaler"}
    assert hpas == {"ingest", "drift"} and not [d for d in plain if d["kind"] in ("ScaledObject", "RayService")]
    pdbs = {d["metadata"]["name"].removeprefix("argus-argus-") for d in plain if d["kind"] == "PodDisruptionBudget"}
    assert pdbs == {"ingest", "drift", "alerting"}
    fixed = render({"autoscaling": {"hpa": {"enabled": False}}})
    ingest = next(d for d in fixed if d["kind"] == "Deployment" and d["metadata"]["name"] == "argus-argus-ingest")
    assert ingest["spec"]["replicas"] == 1


def test_the_migration_job_migrates_a_clickhouse_cluster_when_one_is_named() -> None:
    def cluster_env(docs: list[dict]) -> dict[str, str]:
        return {
            d["metadata"]["name"]: e["value"]
            for d in docs
            if d["kind"] in ("Deployment", "Job", "CronJob")
            for c in _containers(d)
            for e in c.get("env", [])
            if e["name"].endswith("_CLICKHOUSE__CLUSTER")
        }

    assert cluster_env(render()) == {}
    named = cluster_env(render({"clickhouse": {"cluster": "analytics"}}))
    assert named and set(named.values()) == {"analytics"}


def test_a_guard_model_on_gpu_nodes_reaches_the_inference_settings_and_the_serve_config() -> None:
    """`inference.guardModel` (vLLM only) becomes ARGUS_INFERENCE_GUARD_MODEL; the settings
    built from the chart's env give a GPU Serve config with the guard's pinned artifact and
    an LLMConfig that Ray Serve LLM accepts."""
    import json as _json
    import os

    from services.inference.gpu import gpu_serve_applications
    from services.inference.settings import InferenceSettings

    guard = {"model_path": "/models/llama-guard-3-1b", "sha256": "c" * 64, "gpu_memory_utilization": 0.25}
    values = {
        "inference": {
            "engine": {"kind": "vllm", "numGpus": 1},
            "versions": [{"version": "v1", "weight": 100, "model_path": "/models/m", "sha256": "a" * 64}],
            "guardModel": guard,
        }
    }
    (pod,) = [d for d in render(values) if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-inference")]
    env = {e["name"]: e["value"] for e in _containers(pod)[0]["env"] if "value" in e}
    assert _json.loads(env["ARGUS_INFERENCE_GUARD_MODEL"]) == guard
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("ARGUS_INFERENCE_")})
    try:
        cfg = gpu_serve_applications(InferenceSettings())[0]  # the router's application holds the guard
    finally:
        os.environ.clear()
        os.environ.update(saved)
    g = cfg["args"]["guard"]
    assert g["artifact"]["model_path"] == guard["model_path"] and g["artifact"]["sha256"] == "c" * 64
    assert g["info"] == {"name": "llama-guard", "version": "llama-guard", "digest": "sha256:" + "c" * 64}
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    llm = LLMConfig(**g["llm_config"])
    assert llm.model_loading_config.model_source == guard["model_path"] and llm.engine_kwargs["max_logprobs"] == 5
    # without a guard model, the CPU defaults have none
    assert "ARGUS_INFERENCE_GUARD_MODEL" not in {e["name"] for e in _containers(pod_of(render()))[0]["env"]}


def pod_of(docs: list[dict]) -> dict:
    (pod,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-inference")]
    return pod


def test_compose_serves_the_key_service_over_https_and_clickhouse_checks_it() -> None:
    from services.common.subject_keys import clickhouse_client_tls_config

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    keys = services["keys"]["environment"]
    assert (
        keys["ARGUS_KEYS_TLS_CERT_FILE"] == "/etc/argus/keys-tls/keys.pem" and "ARGUS_KEYS_ALLOW_PLAINTEXT" not in keys
    )
    assert keys["ARGUS_PRIVACY_KEYS_URL"].startswith("https://")
    assert services["argus-init"]["environment"]["ARGUS_PRIVACY_KEYS_URL"] == "https://keys:8129"
    assert "https://" in " ".join(services["keys"]["healthcheck"]["test"])
    # the certificate's key: only its generator and the key service hold it
    holders = {n for n, s in services.items() if any(str(v).startswith("keys-tls:") for v in s.get("volumes", []))}
    assert holders == {"keys", "kafka-secrets"}
    # ClickHouse's config.d: the generated strict client section, the CA mounted where it says
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["clickhouse"]["volumes"] if v.count(":") == 2)
    xml = mounts["./deploy/clickhouse/config.d/argus-keys-tls.xml"]
    assert xml == "/etc/clickhouse-server/config.d/argus-keys-tls.xml"
    assert mounts["kafka-ca"] == "/etc/argus/kafka-ca"
    shipped = (REPO / "deploy" / "clickhouse" / "config.d" / "argus-keys-tls.xml").read_text()
    assert shipped.endswith(clickhouse_client_tls_config(Path("/etc/argus/kafka-ca/ca.pem")))
