-- The audit trail (argus.audit, docs/governance.md): hash-chained, signed events, one chain
-- per writer. A plain MergeTree, append-only: a second row at the same position is
-- evidence of tampering that `argus audit verify` reports, never an update a merge would
-- fold away. No TTL: the trail is kept as long as the database is. Only the admin may
-- alter it; ingest inserts, people read.
CREATE TABLE IF NOT EXISTS {db}.audit_log
(
    event_id      UUID,
    writer        LowCardinality(String),
    chain_seq     UInt64,
    prev_hash     String,
    occurred_at   DateTime64(3, 'UTC'),
    action        LowCardinality(String),
    actor         String,
    subject       String,
    detail        Map(String, String),
    hash          String,
    signature     String,
    key_id        LowCardinality(String),
    _topic        LowCardinality(String),
    _partition    UInt16,
    _offset       UInt64,
    ingested_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (writer, chain_seq);
