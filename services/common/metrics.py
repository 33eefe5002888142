"""One catalogue of the platform's metric names, with type and meaning, exposed in
Prometheus format. Code talks to :class:`Metrics` by catalogue name, so a typo is an
error at start-up rather than a silently missing series."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


@dataclass(frozen=True)
class MetricDef:
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]


CATALOGUE: dict[str, MetricDef] = {
    "argus_messages_consumed_total": MetricDef("counter", "Messages read from Kafka.", ("service", "topic")),
    "argus_messages_produced_total": MetricDef("counter", "Messages written to Kafka.", ("service", "topic")),
    "argus_drift_feedback_unattributed_total": MetricDef(
        "counter", "Feedback whose response was not in the drift worker's join window (not judged).", ("service",)
    ),
    "argus_duplicate_requests_total": MetricDef(
        "counter",
        "Requests whose id the bridge had answered (or was answering) within its dedupe window.",
        ("service",),
    ),
    "argus_http_requests_seen_total": MetricDef(
        "counter",
        "Requests on the requests topic that the HTTP route answered and published itself (not generated again).",
        ("service",),
    ),
    "argus_fairness_unjoined_total": MetricDef(
        "counter", "Answers whose request was not in the drift worker's join window (no fairness test).", ("service",)
    ),
    "argus_tenant_replies_failed_total": MetricDef(
        "counter",
        "Answers the bridge could not copy to a tenant's reply topic (topic gone).",
        ("service", "error_type"),
    ),
    "argus_messages_dead_lettered_total": MetricDef(
        "counter", "Messages sent to a dead-letter topic, by error type.", ("service", "topic", "error_type")
    ),
    "argus_dead_letter_storm": MetricDef(
        "gauge",
        "1 while a partition's share of dead letters is over the policy's limit.",
        ("service", "topic", "partition"),
    ),
    "argus_dead_letter_storms_total": MetricDef(
        "counter",
        "Dead-letter storms that started (the share of invalid messages crossed the limit).",
        ("service", "topic"),
    ),
    "argus_batch_size": MetricDef("histogram", "Messages per sink batch.", ("service", "topic")),
    "argus_sink_seconds": MetricDef(
        "histogram", "Time a sink batch (e.g. a ClickHouse insert) took.", ("service", "sink")
    ),
    "argus_sink_retries_total": MetricDef("counter", "Transient sink failures that were retried.", ("service", "sink")),
    "argus_commits_total": MetricDef("counter", "Offset commits after a sink batch.", ("service",)),
    "argus_consumer_lag": MetricDef(
        "gauge", "High watermark minus committed position.", ("service", "topic", "partition")
    ),
    "argus_in_flight": MetricDef("gauge", "Requests or records being processed.", ("service",)),
    "argus_last_poll_timestamp_seconds": MetricDef("gauge", "Unix time the poll loop last advanced.", ("service",)),
    "argus_rows_inserted_total": MetricDef("counter", "Rows written to ClickHouse.", ("service", "table")),
    "argus_drift_embeddings_total": MetricDef(
        "counter", "Prompts embedded for semantic drift, or skipped by the rate limit.", ("service", "outcome")
    ),
    "argus_signals_total": MetricDef(
        "counter", "Signals the alerting engine observed, by source.", ("service", "source")
    ),
    "argus_alert_transitions_total": MetricDef(
        "counter", "Alert state changes (pending, firing, resolved, suppressed).", ("service", "rule", "status")
    ),
    "argus_alerts_active": MetricDef("gauge", "Alerts held by the alerting engine, by state.", ("service", "state")),
    "argus_silences_active": MetricDef("gauge", "Silences in force.", ("service",)),
    "argus_notifications_total": MetricDef(
        "counter",
        "Notification attempts by outcome (delivered, retried, rejected, gave_up).",
        ("service", "receiver", "outcome"),
    ),
    "argus_notification_seconds": MetricDef(
        "histogram", "From a group's flush to the receiver's acknowledgement.", ("service", "receiver")
    ),
    "argus_detector_updates_total": MetricDef(
        "counter", "Observations fed to drift detectors, by feature kind.", ("service", "kind")
    ),
    "argus_drift_events_total": MetricDef(
        "counter",
        "Drift events published, by feature, detector and status (started, ended).",
        ("service", "feature", "detector", "status"),
    ),
    "argus_retraining_transitions_total": MetricDef(
        "counter", "Retraining trigger state changes written, by policy and state.", ("service", "policy", "state")
    ),
    "argus_governance_verified_total": MetricDef(
        "counter",
        "Governance records (triggers, registry) whose signature verified, by topic and signer.",
        ("service", "topic", "signer"),
    ),
    "argus_governance_refused_total": MetricDef(
        "counter",
        "Governance records refused and dead-lettered (unsigned, bad signature, untrusted, revoked, "
        "wrong role or actor, replayed), by topic and reason.",
        ("service", "topic", "reason"),
    ),
    "argus_pii_findings_total": MetricDef(
        "counter", "PII found (and redacted, hashed or dropped) before storage.", ("service", "kind", "mode")
    ),
    "argus_subject_keys_requests_total": MetricDef(
        "counter",
        "Key service calls by endpoint and outcome (ok, unauthorized, bad_request).",
        ("service", "endpoint", "outcome"),
    ),
    "argus_subject_keys_served_total": MetricDef(
        "counter",
        "Subject keys handed to ClickHouse's dictionaries (ensure: inserts, lookup: reads).",
        ("service", "endpoint"),
    ),
    "argus_subject_keys_destroyed_total": MetricDef("counter", "Subject keys destroyed (erasures).", ("service",)),
}

_BUCKETS = {
    "argus_batch_size": (1, 10, 50, 100, 500, 1000, 5000, 10000, 50000),
    "argus_notification_seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    "argus_sink_seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
}


class Metrics:
    """Per-process metrics with their own registry (so tests can make many)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self._m: dict[str, object] = {}
        for name, d in CATALOGUE.items():
            cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[d.kind]
            kwargs = {"buckets": _BUCKETS[name]} if name in _BUCKETS else {}
            self._m[name] = cls(
                name.removesuffix("_total") if d.kind == "counter" else name,
                d.help,
                d.labels,
                registry=self.registry,
                **kwargs,
            )

    def _get(self, name: str, labels: dict[str, str]):
        if name not in CATALOGUE:
            raise KeyError(f"metric {name!r} is not in the catalogue")
        return self._m[name].labels(service=self.service, **labels)  # type: ignore[attr-defined]

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        self._get(name, labels).inc(n)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._get(name, labels).set(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._get(name, labels).observe(value)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a counter or gauge sample (for status displays and tests)."""
        sample_name = name if CATALOGUE[name].kind != "counter" else name
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name == sample_name and all(
                    s.labels.get(k) == v for k, v in {"service": self.service, **labels}.items()
                ):
                    return s.value
        return 0.0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
