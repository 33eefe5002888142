"""The topic and schema registry: ``schemas/`` (at the repository root, shipped in the
package as :mod:`services.common.contracts`) is the single contract between services.

- ``schemas/topics/<key>.yaml``: one topic (name, partitions, config, value schema and
  version, compatibility mode, producers, consumers, dead-letter topic).
- ``schemas/avro/<schema>.v<N>.avsc``: one file per released record version.
- ``schemas/avro/ids.yaml``: the wire-format schema id of every version.
- ``schemas/examples/<key>/<N>/*.json``: golden messages.

Everything is parsed once and cached; services call :func:`get_codec` and
:func:`get_topic` and never read schema files themselves.

Example::

    >>> codec = get_codec("inference-requests")
    >>> codec.name, codec.version, codec.schema_id
    ('inference_request', 1, 1)
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
import yaml

from services.common.codec import AvroCodec, from_json
from services.common.contracts import contract_path
from services.common.tenant_names import tenant_of

SCHEMAS_DIR = contract_path("schemas")
_AVSC = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<version>\d+)\.avsc$")


class RegistryError(RuntimeError):
    """The contracts in ``schemas/`` are inconsistent (missing file, unknown topic...)."""


@dataclass(frozen=True)
class TopicSpec:
    key: str
    name: str
    description: str
    partitions: int
    config: dict[str, str]
    schema: str
    version: int
    compatibility: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    dead_letter_topic: str | None
    message_key: str = ""
    # per-tenant copies of this topic (same contract): e.g. "argus.tenant.{tenant}.requests"
    tenant_topic: str | None = None
    # copies of each partition, and how many must have a write before acks=all answers: a
    # cluster of three keeps taking writes with one broker down, and loses none
    replication_factor: int = 3
    min_insync_replicas: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


def _retention(spec: TopicSpec) -> int | None:
    """A topic's retention.ms; None for forever (-1, or not set: the broker default is
    not what the registry promises)."""
    value = int(spec.config.get("retention.ms", "-1"))
    return None if value < 0 else value


class SchemaRegistry:
    """Parsed view of one ``schemas/`` directory. Thread-safe and cached."""

    def __init__(self, root: Path = SCHEMAS_DIR) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._parsed: dict[tuple[str, int], Any] = {}
        self._codecs: dict[tuple[str, int | None], AvroCodec] = {}
        self._remote_ids: dict[tuple[str, int], int] = {}
        self._remote_writers: dict[int, Any] = {}
        self._remote = None
        ids_file = self.root / "avro" / "ids.yaml"
        raw_ids = yaml.safe_load(ids_file.read_text()) or {}
        self.ids: dict[tuple[str, int], int] = {}
        for key, schema_id in raw_ids.items():
            name, _, ver = key.rpartition(".v")
            self.ids[(name, int(ver))] = int(schema_id)
        if len(set(self.ids.values())) != len(self.ids):
            raise RegistryError(f"{ids_file}: schema ids must be unique")
        self._by_id = {v: k for k, v in self.ids.items()}
        self.topics: dict[str, TopicSpec] = {}
        for path in sorted((self.root / "topics").glob("*.yaml")):
            self.topics[path.stem] = self._load_topic(path)
        for spec in self.topics.values():
            if spec.dead_letter_topic and spec.dead_letter_topic not in self.topics:
                raise RegistryError(
                    f"topic {spec.key}: dead-letter topic {spec.dead_letter_topic!r} is not in the registry"
                )
            if spec.dead_letter_topic:
                # a dead letter is the original message, whole: it must not outlive its source
                source, dlq = _retention(spec), _retention(self.topics[spec.dead_letter_topic])
                if source is not None and (dlq is None or dlq > source):
                    raise RegistryError(
                        f"topic {spec.key}: its dead-letter topic {spec.dead_letter_topic} keeps messages longer "
                        f"({dlq if dlq is not None else 'forever'} ms) than the topic itself ({source} ms)"
                    )

    def _load_topic(self, path: Path) -> TopicSpec:
        d = yaml.safe_load(path.read_text())
        try:
            spec = TopicSpec(
                key=path.stem,
                name=d["name"],
                description=d.get("description", ""),
                partitions=int(d["partitions"]),
                config={k: str(v) for k, v in (d.get("config") or {}).items()},
                schema=d["value"]["schema"],
                version=int(d["value"]["version"]),
                compatibility=d.get("compatibility", "BACKWARD").upper(),
                producers=tuple(d.get("producers") or ()),
                consumers=tuple(d.get("consumers") or ()),
                dead_letter_topic=d.get("dead_letter_topic"),
                message_key=d.get("key", ""),
                tenant_topic=d.get("tenant_topic"),
                replication_factor=int((d.get("replication") or {}).get("factor", 3)),
                min_insync_replicas=int((d.get("replication") or {}).get("min_insync_replicas", 2)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RegistryError(f"{path}: invalid topic definition: {exc!r}") from exc
        if not 1 <= spec.min_insync_replicas <= spec.replication_factor:
            raise RegistryError(f"{path}: replication needs 1 <= min_insync_replicas <= factor")
        if "min.insync.replicas" in spec.config or "replication.factor" in spec.config:
            raise RegistryError(f"{path}: set replication under `replication:`, not in config")
        if spec.compatibility not in ("BACKWARD", "FORWARD", "FULL", "NONE"):
            raise RegistryError(f"{path}: unknown compatibility mode {spec.compatibility}")
        if spec.tenant_topic is not None and spec.tenant_topic.count("{tenant}") != 1:
            raise RegistryError(f"{path}: tenant_topic must contain {{tenant}} exactly once")
        if (spec.schema, spec.version) not in self.ids:
            raise RegistryError(f"{path}: {spec.schema}.v{spec.version} has no schema id in avro/ids.yaml")
        return spec

    # -- schemas -------------------------------------------------------------
    def schema_file(self, name: str, version: int) -> Path:
        return self.root / "avro" / f"{name}.v{version}.avsc"

    def versions(self, name: str) -> list[int]:
        out = []
        for path in (self.root / "avro").glob(f"{name}.v*.avsc"):
            m = _AVSC.match(path.name)
            if m and m["name"] == name:
                out.append(int(m["version"]))
        return sorted(out)

    def schema_json(self, name: str, version: int) -> dict[str, Any]:
        path = self.schema_file(name, version)
        if not path.exists():
            raise RegistryError(f"no schema file {path}")
        return json.loads(path.read_text())

    def parsed(self, name: str, version: int) -> Any:
        key = (name, version)
        with self._lock:
            if key not in self._parsed:
                # _named_schemas isolated per version: v1 and v2 define the same record names
                self._parsed[key] = fastavro.parse_schema(self.schema_json(name, version), named_schemas={})
            return self._parsed[key]

    def writer_schema(self, schema_id: int) -> Any:
        """Parsed schema for a wire-format id (local ids first, then the remote registry)."""
        if schema_id in self._by_id:
            return self.parsed(*self._by_id[schema_id])
        if schema_id in self._remote_writers:
            return self._remote_writers[schema_id]
        for (name, ver), rid in self._remote_ids.items():
            if rid == schema_id:
                return self.parsed(name, ver)
        if self._remote is not None:
            raw = self._remote.get_schema(schema_id)
            parsed = fastavro.parse_schema(json.loads(raw), named_schemas={})
            self._remote_writers[schema_id] = parsed
            return parsed
        raise KeyError(schema_id)

    # -- topics and codecs ---------------------------------------------------
    def dead_letter_topics(self) -> tuple[str, ...]:
        """Keys of every topic that is some topic's dead-letter topic, in registry order."""
        named = {s.dead_letter_topic for s in self.topics.values() if s.dead_letter_topic}
        return tuple(key for key in self.topics if key in named)

    def key_of(self, name: str) -> tuple[str, str | None]:
        """The registry key of a topic's Kafka name (without the topic prefix) and, for a
        tenant's copy of a topic (``tenant_topic``), the tenant; :class:`RegistryError`
        for a name the registry does not know."""
        for spec in self.topics.values():
            if spec.name == name:
                return spec.key, None
        for spec in self.topics.values():
            if spec.tenant_topic is not None:
                tenant = tenant_of(spec.tenant_topic, name)
                if tenant is not None:
                    return spec.key, tenant
        raise RegistryError(f"{name} is not a registry topic")

    def topic(self, key: str) -> TopicSpec:
        try:
            return self.topics[key]
        except KeyError:
            raise RegistryError(f"unknown topic {key!r}; known: {', '.join(sorted(self.topics))}") from None

    def codec(self, topic: str, version: int | None = None) -> AvroCodec:
        spec = self.topic(topic)
        ver = spec.version if version is None else version
        with self._lock:
            cached = self._codecs.get((spec.schema, ver))
        if cached:
            return cached
        schema_id = self._remote_ids.get((spec.schema, ver)) or self.ids.get((spec.schema, ver))
        if schema_id is None:
            raise RegistryError(f"{spec.schema}.v{ver} has no schema id")
        codec = AvroCodec(spec.schema, ver, schema_id, self.parsed(spec.schema, ver), self.writer_schema)
        with self._lock:
            self._codecs[(spec.schema, ver)] = codec
        return codec

    def examples(self, topic: str) -> dict[int, list[tuple[Path, dict[str, Any]]]]:
        """Golden examples of a topic by schema version, converted for fastavro."""
        spec = self.topic(topic)
        out: dict[int, list[tuple[Path, dict[str, Any]]]] = {}
        base = self.root / "examples" / topic
        for vdir in sorted(base.glob("*")):
            if not vdir.is_dir() or not vdir.name.isdigit():
                continue
            ver = int(vdir.name)
            schema = self.schema_json(spec.schema, ver)
            out[ver] = [(p, from_json(schema, json.loads(p.read_text()))) for p in sorted(vdir.glob("*.json"))]
        return out

    def use_remote(self, client: Any) -> None:
        """Register every topic's current schema in a Confluent-compatible registry
        (subject ``<topic name>-value``, TopicNameStrategy) and use its ids on the wire."""
        self._remote = client
        for spec in self.topics.values():
            for ver in self.versions(spec.schema):
                sid = client.register(f"{spec.name}-value", json.dumps(self.schema_json(spec.schema, ver)))
                # a registry gives one global id per distinct schema text, whatever the subject
                self._remote_ids[(spec.schema, ver)] = sid
        with self._lock:
            self._codecs.clear()


@lru_cache(maxsize=None)
def default_registry() -> SchemaRegistry:
    return SchemaRegistry(SCHEMAS_DIR)


def get_topic(key: str) -> TopicSpec:
    return default_registry().topic(key)


def dead_letter_topics() -> tuple[str, ...]:
    """Keys of the registry's dead-letter topics (what ingest stores and alerting watches)."""
    return default_registry().dead_letter_topics()


def get_codec(topic: str, version: int | None = None) -> AvroCodec:
    """The cached codec of a topic's value schema (its current version by default)."""
    return default_registry().codec(topic, version)


def strimzi_topics(registry: SchemaRegistry | None = None) -> dict[str, dict[str, Any]]:
    """Every registry topic as a Strimzi ``KafkaTopic`` spec, by unprefixed name:
    partitions, replicas and config (with ``min.insync.replicas``), as the production
    cluster gets them (``deploy/helm/argus/files/kafka-topics.yaml``, `argus topics plan
    --strimzi`)."""
    reg = registry or default_registry()
    return {
        spec.name: {
            "partitions": spec.partitions,
            "replicas": spec.replication_factor,
            "config": {**spec.config, "min.insync.replicas": str(spec.min_insync_replicas)},
        }
        for spec in sorted(reg.topics.values(), key=lambda t: t.name)
    }
