from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.common.compat import check_registry
from services.common.registry import SCHEMAS_DIR, RegistryError, SchemaRegistry, default_registry

REG = default_registry()


def test_registry_has_the_platform_topics() -> None:
    for key in (
        "inference-requests",
        "inference-responses",
        "feedback",
        "drift-events",
        "alerts",
        "retraining-triggers",
    ):
        spec = REG.topic(key)
        assert spec.dead_letter_topic, f"{key} has no dead-letter topic"
        assert REG.topic(spec.dead_letter_topic).schema == "dead_letter"
        assert spec.producers and spec.consumers


def test_every_schema_file_has_an_id_and_every_topic_examples() -> None:
    for path in (SCHEMAS_DIR / "avro").glob("*.avsc"):
        name, ver = path.stem.rsplit(".v", 1)
        assert (name, int(ver)) in REG.ids, f"{path.name} has no id in ids.yaml"
    for key in REG.topics:
        assert any(REG.examples(key).values()), f"{key} has no golden examples"


def test_unknown_topic_error_lists_known_topics() -> None:
    with pytest.raises(RegistryError, match="inference-requests"):
        REG.topic("inference-request")


def test_released_schemas_are_compatible_and_examples_valid() -> None:
    assert check_registry(REG) == []


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, root)
    return root


def _add_feedback_v2(root: Path, new_field: str) -> None:
    schema = (root / "avro" / "feedback.v1.avsc").read_text()
    v2 = schema.replace('"namespace": "io.argus.v1"', '"namespace": "io.argus.v2"').replace(
        '"fields": [', '"fields": [\n    ' + new_field + ",", 1
    )
    (root / "avro" / "feedback.v2.avsc").write_text(v2)
    ids = (root / "avro" / "ids.yaml").read_text() + "feedback.v2: 99\n"
    (root / "avro" / "ids.yaml").write_text(ids)
    topic = (root / "topics" / "feedback.yaml").read_text().replace("version: 1", "version: 2")
    (root / "topics" / "feedback.yaml").write_text(topic)


def test_compatible_new_version_passes(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _add_feedback_v2(root, '{"name": "channel", "type": "string", "default": "web"}')
    assert check_registry(SchemaRegistry(root)) == []


def test_incompatible_new_version_is_caught(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _add_feedback_v2(root, '{"name": "channel", "type": "string"}')  # required field, no default
    problems = check_registry(SchemaRegistry(root))
    assert problems and "v2 cannot read thumbs_down.json written as v1" in str(problems[0])


def test_invalid_golden_example_is_caught(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "examples" / "feedback" / "1" / "bad.json").write_text('{"feedback_id": "x"}')
    problems = check_registry(SchemaRegistry(root))
    assert any("bad.json is not a valid v1 record" in str(p) for p in problems)


def test_a_dead_letter_topic_never_outlives_its_source(tmp_path) -> None:  # noqa: ANN001
    """A dead letter is the whole original message (a prompt, say): keeping it 30 days
    when the source topic keeps 7 would make the dead-letter topic the place personal
    data outlives its retention. The registry refuses such a pair (and loads as shipped)."""
    requests = default_registry().topic("inference-requests")
    dlq = default_registry().topic(requests.dead_letter_topic)
    assert int(dlq.config["retention.ms"]) <= int(requests.config["retention.ms"])
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, root)
    path = root / "topics" / "inference-requests-dlq.yaml"
    path.write_text(path.read_text().replace('retention.ms: "604800000"', 'retention.ms: "2592000000"'))
    with pytest.raises(RegistryError, match="keeps messages longer"):
        SchemaRegistry(root)


def test_replication_comes_from_the_registry_and_a_single_broker_setting_makes_it_one(tmp_path) -> None:  # noqa: ANN001
    from services.common.settings import KafkaSettings

    reg = default_registry()
    assert {(t.replication_factor, t.min_insync_replicas) for t in reg.topics.values()} == {(3, 2)}
    assert KafkaSettings().replicas(3, 2) == (3, 2)  # production unless told otherwise
    assert KafkaSettings(replication="single-broker").replicas(3, 2) == (1, 1)
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, root)
    path = root / "topics" / "audit.yaml"
    original = path.read_text()
    path.write_text(original.replace("{factor: 3, min_insync_replicas: 2}", "{factor: 5, min_insync_replicas: 3}"))
    assert SchemaRegistry(root).topic("audit").replication_factor == 5
    path.write_text(original.replace("{factor: 3, min_insync_replicas: 2}", "{factor: 2, min_insync_replicas: 3}"))
    with pytest.raises(RegistryError, match="min_insync_replicas"):
        SchemaRegistry(root)
    path.write_text(original.replace("cleanup.policy: delete", "cleanup.policy: delete\n  min.insync.replicas: 1"))
    with pytest.raises(RegistryError, match="not in config"):
        SchemaRegistry(root)
