-- Silences (create, update, expire), so SREs can see who muted what, when and why.
CREATE TABLE IF NOT EXISTS {db}.alert_silences
(
    event_id     UUID,
    silence_id   UUID,
    action       Enum8('create' = 1, 'update' = 2, 'expire' = 3),
    matchers     Array(String),
    starts_at    DateTime64(3, 'UTC'),
    ends_at      DateTime64(3, 'UTC'),
    created_by   LowCardinality(String),
    comment      String,
    emitted_at   DateTime64(3, 'UTC'),
    _topic       LowCardinality(String),
    _partition   UInt16,
    _offset      UInt64,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(emitted_at)
ORDER BY (silence_id, emitted_at, event_id)
TTL toDateTime(emitted_at) + INTERVAL 365 DAY;
