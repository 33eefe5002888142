-- The model registry's history: every version, its digest, card and status changes.
CREATE TABLE IF NOT EXISTS {db}.model_registry
(
    event_id        UUID,
    model           LowCardinality(String),
    version         LowCardinality(String),
    status          LowCardinality(String),
    artifact_uri    String,
    sha256          FixedString(64),
    card            Map(String, String),
    parent_version  Nullable(String),
    trigger_id      Nullable(String),
    actor           LowCardinality(String),
    comment         String,
    occurred_at     DateTime64(3, 'UTC'),
    _topic          LowCardinality(String),
    _partition      UInt16,
    _offset         UInt64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY (model, version, occurred_at, event_id);
