-- Every dead letter of every topic, queryable by SREs: what failed, where, and why.
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    original_topic      LowCardinality(String),
    original_partition  UInt32,
    original_offset     UInt64,
    original_key        Nullable(String),
    original_value      Nullable(String),
    original_timestamp  Nullable(DateTime64(3, 'UTC')),
    reason              String,
    error_type          LowCardinality(String),
    consumer_group      LowCardinality(String),
    service             LowCardinality(String),
    failed_at           DateTime64(3, 'UTC'),
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(failed_at)
ORDER BY (original_topic, original_partition, original_offset, consumer_group)
TTL toDateTime(failed_at) + INTERVAL 90 DAY;
