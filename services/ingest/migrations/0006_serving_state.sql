-- Serving states of the inference application: what was asked for (desired) and what the
-- inference service did (applied / failed), one row per record, in revision order.
CREATE TABLE IF NOT EXISTS {db}.serving_state
(
    event_id        UUID,
    model           LowCardinality(String),
    revision        UInt64,
    status          LowCardinality(String),
    versions        Array(Tuple(version String, weight Float64, artifact_uri String, sha256 Nullable(String), shadow Bool)),
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
ORDER BY (model, revision, status, event_id);
