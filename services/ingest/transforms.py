"""Pure transforms: one decoded Kafka message -> one ClickHouse row, with PII protected
per tenant. No I/O here; the golden examples are fed through these in the tests."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from services.common.audit import FIELDS as AUDIT_FIELDS
from services.common.codec import SerializationError, to_json
from services.common.errors import describe
from services.common.pii import PiiPolicy, scrub
from services.common.pipeline import InvalidMessage, Message
from services.common.registry import RegistryError, dead_letter_topics, default_registry
from services.common.subject_keys import SEALED


class Protector:
    """Applies the tenant's PII policy and counts what it found."""

    def __init__(
        self, default: PiiPolicy, tenants: dict[str, PiiPolicy], key: bytes, budget_s: float | None = None
    ) -> None:
        self.default = default
        self.tenants = tenants
        self.key = key
        self.budget_s = budget_s  # per text: past it the text is stored as [UNSCREENED]
        self.counts: Counter = Counter()  # (kind, mode) -> n, drained by the service into metrics

    def policy(self, tenant: str | None) -> PiiPolicy:
        return self.tenants.get(tenant or "", self.default)

    def __call__(self, text: str | None, tenant: str | None, pii: dict[str, int]) -> str | None:
        if text is None:
            return None
        policy = self.policy(tenant)
        out = scrub(text, policy, self.key, self.budget_s)
        if out.counts:
            for kind, n in out.counts.items():
                pii[kind] = pii.get(kind, 0) + n
            mode = "drop" if out.dropped else policy.mode
            for kind, n in out.counts.items():
                self.counts[(kind, mode)] += n
        return out.text


Row = tuple


@dataclass(frozen=True)
class TableSpec:
    table: str
    topics: tuple[str, ...]
    columns: tuple[str, ...]
    build: Callable[[Message, Protector], Row]

    def insert_name(self, column: str) -> str:
        """The name an insert gives ``column``: ``<name>_in`` for one ClickHouse seals
        (:data:`~services.common.subject_keys.SEALED`)."""
        return f"{column}_in" if column in SEALED.get(self.table, ()) else column

    @property
    def insert_columns(self) -> list[str]:
        return [self.insert_name(c) for c in self.columns]

    def transform(self, protector: Protector) -> Callable[[Message], Row]:
        def run(msg: Message) -> Row:
            try:
                return self.build(msg, protector)
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidMessage(f"cannot map to {self.table}: {describe(exc)}", "InvalidMessage.Mapping") from exc

        return run


_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def _id(value: Any, field: str) -> Any:
    """A UUID column value; a malformed one is the message's fault (dead letter), not
    an insert error that would stall the whole batch."""
    if isinstance(value, str) and not _UUID.match(value):
        raise InvalidMessage(f"{field} is not a UUID: {value[:64]!r}", "InvalidMessage.BadUUID")
    return value


def _unsigned(value: int | None, field: str) -> int | None:
    if value is not None and value < 0:
        raise InvalidMessage(f"{field} must not be negative, got {value}", "InvalidMessage.OutOfRange")
    return value


def _coords(msg: Message) -> tuple[str, int, int]:
    return msg.topic, msg.partition, msg.offset


def _kept_user(v: dict[str, Any], protect: Protector) -> str | None:
    """The user id for ``user_id`` (sealed by ClickHouse) where the tenant's policy keeps
    it; elsewhere only its keyed pseudonym is stored (``user``)."""
    return v["user"] if protect.policy(v["tenant"]).keep_user else None


def _request(msg: Message, protect: Protector) -> Row:
    v = msg.value
    pii: dict[str, int] = {}
    tenant = v["tenant"]
    system = "\n".join(m["content"] for m in v["messages"] if m["role"] == "system") or None
    convo = "\n\n".join(f"{m['role']}: {m['content']}" for m in v["messages"] if m["role"] != "system")
    prompt = protect(convo, tenant, pii)
    system = protect(system, tenant, pii)
    metadata: dict[str, str] = {}
    for i, (k, val) in enumerate(v["metadata"].items()):
        key = protect(k, tenant, pii) or f"[key {i}]"  # keys can hold personal data too
        metadata[key if key not in metadata else f"{key}#{i}"] = protect(val, tenant, pii) or ""
    return (
        _id(v["request_id"], "request_id"),
        v["created_at"],
        v["model"],
        tenant,
        v["user"],
        prompt,
        system,
        len(v["messages"]),
        len(convo),
        _unsigned(v["max_tokens"], "max_tokens"),
        v["temperature"],
        v["top_p"],
        v["deadline"],
        v["trace_id"],
        v["span_id"],
        metadata,
        pii,
        _kept_user(v, protect),
        *_coords(msg),
    )


def _response(msg: Message, protect: Protector) -> Row:
    v = msg.value
    pii: dict[str, int] = {}
    tenant = v["tenant"]
    output = protect(v["output"], tenant, pii)
    error = protect(v["error_message"], tenant, pii)
    return (
        _id(v["request_id"], "request_id"),
        _id(v["response_id"], "response_id"),
        v["served_at"],
        v["model"],
        v["response_model"],
        v["model_version"],
        tenant,
        v["user"],
        output,
        len(v["output"] or ""),
        v["finish_reason"],
        _unsigned(v["input_tokens"], "input_tokens"),
        _unsigned(v["output_tokens"], "output_tokens"),
        v["latency_ms"],
        v["time_to_first_token_ms"],
        v["mean_logprob"],
        v["status"],
        v["error_type"],
        error,
        v["replica"],
        _unsigned(v["replica_cpu_memory_bytes"], "replica_cpu_memory_bytes"),
        _unsigned(v["replica_gpu_memory_bytes"], "replica_gpu_memory_bytes"),
        v.get("replica_cpu_percent"),
        v.get("replica_gpu_utilization"),
        v["shadow"],
        v["trace_id"],
        v["span_id"],
        v.get("guard_action"),
        v.get("guard_verdict"),
        v.get("cost"),
        pii,
        _kept_user(v, protect),
        *_coords(msg),
    )


def _feedback(msg: Message, protect: Protector) -> Row:
    v = msg.value
    pii: dict[str, int] = {}
    t = v["tenant"]
    return (
        _id(v["feedback_id"], "feedback_id"),
        _id(v["request_id"], "request_id"),
        v["created_at"],
        t,
        v["user"],
        v["kind"],
        v["score"],
        protect(v["label"], t, pii),
        protect(v["comment"], t, pii),
        v["source"],
        pii,
        _kept_user(v, protect),
        *_coords(msg),
    )


def _drift(msg: Message, protect: Protector) -> Row:
    v = msg.value
    return (
        _id(v["event_id"], "event_id"),
        v["detected_at"],
        v["model"],
        v["model_version"],
        v["feature"],
        v["detector"],
        v["statistic"],
        v["threshold"],
        v["p_value"],
        v["severity"],
        _unsigned(v["reference_window_size"], "reference_window_size"),
        _unsigned(v["current_window_size"], "current_window_size"),
        v["reference_summary"],
        v["current_summary"],
        _unsigned(v["change_offset"], "change_offset"),
        v["change_time"],
        v["example_request_ids"],
        v["detector_params"],
        v.get("status") or "started",
        v.get("direction") or "",
        _id(v["episode_id"], "episode_id") if v.get("episode_id") else None,
        *_coords(msg),
    )


def _alert(msg: Message, protect: Protector) -> Row:
    v = msg.value
    return (
        _id(v["event_id"], "event_id"),
        v["fingerprint"],
        v["rule"],
        v["status"],
        v["severity"],
        v["labels"],
        v["annotations"],
        v["value"],
        v["starts_at"],
        v["ends_at"],
        v["group_key"],
        v["receiver"],
        v["generator_url"],
        v["emitted_at"],
        *_coords(msg),
    )


def _silence(msg: Message, protect: Protector) -> Row:
    v = msg.value
    pii: dict[str, int] = {}
    return (
        _id(v["event_id"], "event_id"),
        _id(v["silence_id"], "silence_id"),
        v["action"],
        v["matchers"],
        v["starts_at"],
        v["ends_at"],
        v["created_by"],
        protect(v["comment"], None, pii) or "",
        *_signature(v.get("signature")),
        v["emitted_at"],
        *_coords(msg),
    )


def _model_version(msg: Message, protect: Protector) -> Row:
    v = msg.value
    pii: dict[str, int] = {}
    return (
        _id(v["event_id"], "event_id"),
        v["model"],
        v["version"],
        v["status"],
        v["artifact_uri"],
        v["sha256"],
        v["card"],
        v["parent_version"],
        v["trigger_id"],
        v["actor"],
        protect(v["comment"], None, pii) or "",
        *_signature(v.get("signature")),
        *_signature(v.get("artifact_signature")),
        v["occurred_at"],
        *_coords(msg),
    )


def _serving_state(msg: Message, protect: Protector) -> Row:
    v = msg.value
    pii: dict[str, int] = {}
    versions = [(x["version"], x["weight"], x["artifact_uri"], x["sha256"], x["shadow"]) for x in v["versions"]]
    return (
        _id(v["event_id"], "event_id"),
        v["model"],
        _unsigned(v["revision"], "revision"),
        v["status"],
        versions,
        v["trigger_id"],
        v["actor"],
        protect(v["comment"], None, pii) or "",
        *_signature(v.get("signature")),
        v["occurred_at"],
        *_coords(msg),
    )


def _signature(sig: Any) -> tuple[str, str]:
    """(key id, the signature as JSON) of a signed governance record; empty when unsigned."""
    if not isinstance(sig, dict):
        return "", ""
    return str(sig.get("key_id", "")), json.dumps(to_json(sig), sort_keys=True, separators=(",", ":"))


def _audit(msg: Message, protect: Protector) -> Row:
    """Stored exactly as written: a scrubbed or normalised field would break its hash."""
    v = msg.value
    return (
        _id(v["event_id"], "event_id"),
        v["writer"],
        _unsigned(v["chain_seq"], "chain_seq"),
        v["prev_hash"],
        v["occurred_at"],
        v["action"],
        v["actor"],
        v["subject"],
        v["detail"],
        v["hash"],
        v["signature"],
        v["key_id"],
        *_coords(msg),
    )


def _trigger(msg: Message, protect: Protector) -> Row:
    v = msg.value
    pii: dict[str, int] = {}
    return (
        _id(v["event_id"], "event_id"),
        _id(v["trigger_id"], "trigger_id"),
        _unsigned(v["sequence"], "sequence"),
        v["model"],
        v["model_version"],
        v["policy"],
        v["state"],
        v["reason"],
        v["actor"],
        protect(v["comment"], None, pii),
        v["drift_event_ids"],
        v["alert_event_ids"],
        v["dataset_spec"],
        v["candidate_version"],
        *_signature(v.get("signature")),
        v["occurred_at"],
        *_coords(msg),
    )


def _original(topic: str, raw: bytes) -> tuple[Any, str | None] | None:
    """The dead letter's original record decoded with its topic's contract, and the
    tenant it belongs to (the record's, or the tenant topic's); None when it does not
    decode (it was dead-lettered for that) or the topic is not a registry topic."""
    reg = default_registry()
    at = topic.find("argus.")  # Kafka names may carry a deployment prefix
    try:
        key, tenant = reg.key_of(topic[at:] if at > 0 else topic)
        record = reg.codec(key).decode_plain(raw)
    except (RegistryError, SerializationError):
        return None
    if isinstance(record, dict) and isinstance(record.get("tenant"), str) and record["tenant"]:
        tenant = record["tenant"]
    return record, tenant


def _protect_leaves(value: Any, protect: Protector, tenant: str | None, pii: dict[str, int]) -> Any:
    """Every string of a decoded record screened on its own (map keys too): a record's
    text is never screened through a rendering whose escapes or framing bytes could sit
    against a value and hide it from a word-boundary detector."""
    if isinstance(value, str):
        return protect(value, tenant, pii)
    if isinstance(value, dict):
        return {protect(k, tenant, pii) or "": _protect_leaves(v, protect, tenant, pii) for k, v in value.items()}
    if isinstance(value, list):
        return [_protect_leaves(v, protect, tenant, pii) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"[{len(value)} bytes]"
    return value


def _dead_letter(msg: Message, protect: Protector) -> Row:
    """The original message is kept whole on the dead-letter topic (for replay); what
    ClickHouse gets is protected with the policy of the tenant it belongs to: decoded
    with its topic's contract, each text screened on its own; a body that does not
    decode is stored as its size and digest only, never as text (raw Avro bytes put a
    length byte right before a string, which can defeat a detector)."""
    v = msg.value
    pii: dict[str, int] = {}
    original = _original(v["original_topic"], v["original_value"]) if v["original_value"] is not None else None
    tenant = original[1] if original else None
    if v["original_value"] is None:
        body = None
    elif original is None:
        raw = v["original_value"]
        body = f"[undecodable: {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:16]}]"
    elif protect.policy(tenant).store_text:
        body = json.dumps(to_json(_protect_leaves(original[0], protect, tenant, pii)), ensure_ascii=False)
    else:
        body = None  # the tenant stores no text
    key = v["original_key"]
    record = original[0] if original else None
    user = record.get("user") if isinstance(record, dict) and isinstance(record.get("user"), str) else None
    request = (
        record.get("request_id") if isinstance(record, dict) and isinstance(record.get("request_id"), str) else None
    )
    # whose data this is: the record's user, else its request, else this dead letter alone
    subject = (
        user
        if user is not None
        else f"request:{request}"
        if request is not None
        else f"dead-letter:{v['original_topic']}:{v['original_partition']}:{v['original_offset']}"
    )
    return (
        v["original_topic"],
        _unsigned(v["original_partition"], "original_partition"),
        _unsigned(v["original_offset"], "original_offset"),
        tenant or "",
        subject,
        user,
        None if key is None else protect(key.decode("utf-8", errors="replace"), tenant, pii),
        body,
        v["original_timestamp"],
        protect(v["reason"], tenant, pii),
        v["error_type"],
        v["consumer_group"],
        v["service"],
        v["failed_at"],
        *_coords(msg),
    )


_K = ("_topic", "_partition", "_offset")
DLQ_TOPICS = dead_letter_topics()  # every topic's dead-letter topic, as the registry names them

TABLES: dict[str, TableSpec] = {
    spec.table: spec
    for spec in (
        TableSpec(
            "inference_requests",
            ("inference-requests",),
            (
                "request_id",
                "created_at",
                "model",
                "tenant",
                "user",
                "prompt",
                "system_prompt",
                "message_count",
                "prompt_chars",
                "max_tokens",
                "temperature",
                "top_p",
                "deadline",
                "trace_id",
                "span_id",
                "metadata",
                "pii_counts",
                "user_id",
                *_K,
            ),
            _request,
        ),
        TableSpec(
            "inference_responses",
            ("inference-responses", "inference-shadow-responses"),
            (
                "request_id",
                "response_id",
                "served_at",
                "model",
                "response_model",
                "model_version",
                "tenant",
                "user",
                "output",
                "output_chars",
                "finish_reason",
                "input_tokens",
                "output_tokens",
                "latency_ms",
                "time_to_first_token_ms",
                "mean_logprob",
                "status",
                "error_type",
                "error_message",
                "replica",
                "replica_cpu_memory_bytes",
                "replica_gpu_memory_bytes",
                "replica_cpu_percent",
                "replica_gpu_utilization",
                "shadow",
                "trace_id",
                "span_id",
                "guard_action",
                "guard_verdict",
                "cost",
                "pii_counts",
                "user_id",
                *_K,
            ),
            _response,
        ),
        TableSpec(
            "feedback",
            ("feedback",),
            (
                "feedback_id",
                "request_id",
                "created_at",
                "tenant",
                "user",
                "kind",
                "score",
                "label",
                "comment",
                "source",
                "pii_counts",
                "user_id",
                *_K,
            ),
            _feedback,
        ),
        TableSpec(
            "drift_events",
            ("drift-events",),
            (
                "event_id",
                "detected_at",
                "model",
                "model_version",
                "feature",
                "detector",
                "statistic",
                "threshold",
                "p_value",
                "severity",
                "reference_window_size",
                "current_window_size",
                "reference_summary",
                "current_summary",
                "change_offset",
                "change_time",
                "example_request_ids",
                "detector_params",
                "status",
                "direction",
                "episode_id",
                *_K,
            ),
            _drift,
        ),
        TableSpec(
            "alerts",
            ("alerts",),
            (
                "event_id",
                "fingerprint",
                "rule",
                "status",
                "severity",
                "labels",
                "annotations",
                "value",
                "starts_at",
                "ends_at",
                "group_key",
                "receiver",
                "generator_url",
                "emitted_at",
                *_K,
            ),
            _alert,
        ),
        TableSpec(
            "alert_silences",
            ("alert-silences",),
            (
                "event_id",
                "silence_id",
                "action",
                "matchers",
                "starts_at",
                "ends_at",
                "created_by",
                "comment",
                "signed_by",
                "signature",
                "emitted_at",
                *_K,
            ),
            _silence,
        ),
        TableSpec(
            "audit_log",
            ("audit",),
            (*AUDIT_FIELDS, *_K),
            _audit,
        ),
        TableSpec(
            "retraining_triggers",
            ("retraining-triggers", "retraining-state"),  # the state topic repeats the latest: same rows
            (
                "event_id",
                "trigger_id",
                "sequence",
                "model",
                "model_version",
                "policy",
                "state",
                "reason",
                "actor",
                "comment",
                "drift_event_ids",
                "alert_event_ids",
                "dataset_spec",
                "candidate_version",
                "signed_by",
                "signature",
                "occurred_at",
                *_K,
            ),
            _trigger,
        ),
        TableSpec(
            "model_registry",
            ("model-registry",),
            (
                "event_id",
                "model",
                "version",
                "status",
                "artifact_uri",
                "sha256",
                "card",
                "parent_version",
                "trigger_id",
                "actor",
                "comment",
                "signed_by",
                "signature",
                "artifact_signed_by",
                "artifact_signature",
                "occurred_at",
                *_K,
            ),
            _model_version,
        ),
        TableSpec(
            "serving_state",
            ("serving-state",),
            (
                "event_id",
                "model",
                "revision",
                "status",
                "versions",
                "trigger_id",
                "actor",
                "comment",
                "signed_by",
                "signature",
                "occurred_at",
                *_K,
            ),
            _serving_state,
        ),
        TableSpec(
            "dead_letters",
            DLQ_TOPICS,
            (
                "original_topic",
                "original_partition",
                "original_offset",
                "tenant",
                "subject",
                "user",
                "original_key",
                "original_value",
                "original_timestamp",
                "reason",
                "error_type",
                "consumer_group",
                "service",
                "failed_at",
                *_K,
            ),
            _dead_letter,
        ),
    )
}


def table_for(topic_key: str) -> TableSpec:
    for spec in TABLES.values():
        if topic_key in spec.topics:
            return spec
    raise KeyError(f"no ClickHouse table for topic {topic_key!r}")


__all__ = ["TABLES", "TableSpec", "Protector", "table_for"]
