-- The platform's event tables, one per topic family. Every table carries the Kafka
-- coordinates of its rows (_topic, _partition, _offset): the ingest service resumes each
-- partition after the last offset already stored, so a crash between insert and commit
-- never inserts a row twice. ReplacingMergeTree keyed by the event id is the second line
-- of defence (FINAL / merges collapse any duplicate).

CREATE TABLE IF NOT EXISTS {db}.inference_requests
(
    request_id      UUID,
    created_at      DateTime64(3, 'UTC'),
    model           LowCardinality(String),
    tenant          LowCardinality(String),
    user            Nullable(String),
    prompt          Nullable(String) COMMENT 'PII-protected per tenant policy; NULL when not stored',
    system_prompt   Nullable(String),
    message_count   UInt16,
    prompt_chars    UInt32,
    max_tokens      Nullable(UInt32),
    temperature     Nullable(Float32),
    top_p           Nullable(Float32),
    deadline        Nullable(DateTime64(3, 'UTC')),
    trace_id        Nullable(String),
    span_id         Nullable(String),
    metadata        Map(LowCardinality(String), String),
    pii_counts      Map(LowCardinality(String), UInt32),
    _topic          LowCardinality(String),
    _partition      UInt16,
    _offset         UInt64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(created_at)
ORDER BY (model, tenant, toStartOfHour(created_at), request_id)
TTL toDateTime(created_at) + INTERVAL 90 DAY;

CREATE TABLE IF NOT EXISTS {db}.inference_responses
(
    request_id              UUID,
    response_id             UUID,
    served_at               DateTime64(3, 'UTC'),
    model                   LowCardinality(String),
    response_model          LowCardinality(String),
    model_version           LowCardinality(String),
    tenant                  LowCardinality(String),
    user                    Nullable(String),
    output                  Nullable(String) COMMENT 'PII-protected per tenant policy; NULL when not stored',
    output_chars            UInt32,
    finish_reason           LowCardinality(Nullable(String)),
    input_tokens            UInt32,
    output_tokens           UInt32,
    latency_ms              Float64,
    time_to_first_token_ms  Nullable(Float64),
    mean_logprob            Nullable(Float64),
    status                  Enum8('ok' = 1, 'error' = 2, 'deadline_exceeded' = 3, 'rejected' = 4),
    error_type              LowCardinality(Nullable(String)),
    error_message           Nullable(String),
    replica                 LowCardinality(Nullable(String)),
    replica_cpu_memory_bytes Nullable(UInt64),
    replica_gpu_memory_bytes Nullable(UInt64),
    shadow                  Bool,
    trace_id                Nullable(String),
    span_id                 Nullable(String),
    pii_counts              Map(LowCardinality(String), UInt32),
    _topic                  LowCardinality(String),
    _partition              UInt16,
    _offset                 UInt64,
    ingested_at             DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(served_at)
ORDER BY (model, model_version, tenant, toStartOfHour(served_at), response_id)
TTL toDateTime(served_at) + INTERVAL 90 DAY;

CREATE TABLE IF NOT EXISTS {db}.feedback
(
    feedback_id  UUID,
    request_id   UUID,
    created_at   DateTime64(3, 'UTC'),
    tenant       LowCardinality(String),
    user         Nullable(String),
    kind         LowCardinality(String),
    score        Nullable(Float64),
    label        Nullable(String),
    comment      Nullable(String) COMMENT 'PII-protected',
    source       LowCardinality(String),
    pii_counts   Map(LowCardinality(String), UInt32),
    _topic       LowCardinality(String),
    _partition   UInt16,
    _offset      UInt64,
    ingested_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(created_at)
ORDER BY (tenant, toStartOfDay(created_at), feedback_id)
TTL toDateTime(created_at) + INTERVAL 365 DAY;

CREATE TABLE IF NOT EXISTS {db}.drift_events
(
    event_id              UUID,
    detected_at           DateTime64(3, 'UTC'),
    model                 LowCardinality(String),
    model_version         LowCardinality(String),
    feature               LowCardinality(String),
    detector              LowCardinality(String),
    statistic             Float64,
    threshold             Float64,
    p_value               Nullable(Float64),
    severity              Enum8('info' = 1, 'warning' = 2, 'critical' = 3),
    reference_window_size UInt64,
    current_window_size   UInt64,
    reference_summary     Map(LowCardinality(String), Float64),
    current_summary       Map(LowCardinality(String), Float64),
    change_offset         Nullable(UInt64),
    change_time           Nullable(DateTime64(3, 'UTC')),
    example_request_ids   Array(String),
    detector_params       Map(LowCardinality(String), String),
    _topic                LowCardinality(String),
    _partition            UInt16,
    _offset               UInt64,
    ingested_at           DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(detected_at)
ORDER BY (model, model_version, feature, detected_at, event_id)
TTL toDateTime(detected_at) + INTERVAL 365 DAY;

CREATE TABLE IF NOT EXISTS {db}.alerts
(
    event_id       UUID,
    fingerprint    String,
    rule           LowCardinality(String),
    status         Enum8('pending' = 1, 'firing' = 2, 'resolved' = 3, 'suppressed' = 4),
    severity       LowCardinality(String),
    labels         Map(LowCardinality(String), String),
    annotations    Map(LowCardinality(String), String),
    value          Nullable(Float64),
    starts_at      DateTime64(3, 'UTC'),
    ends_at        Nullable(DateTime64(3, 'UTC')),
    group_key      Nullable(String),
    receiver       LowCardinality(Nullable(String)),
    generator_url  Nullable(String),
    emitted_at     DateTime64(3, 'UTC'),
    _topic         LowCardinality(String),
    _partition     UInt16,
    _offset        UInt64,
    ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(emitted_at)
ORDER BY (rule, fingerprint, emitted_at, event_id)
TTL toDateTime(emitted_at) + INTERVAL 365 DAY;

CREATE TABLE IF NOT EXISTS {db}.retraining_triggers
(
    event_id          UUID,
    trigger_id        UUID,
    sequence          UInt32,
    model             LowCardinality(String),
    model_version     LowCardinality(String),
    policy            LowCardinality(String),
    state             LowCardinality(String),
    reason            String,
    actor             Nullable(String),
    comment           Nullable(String),
    drift_event_ids   Array(String),
    alert_event_ids   Array(String),
    dataset_spec      Map(String, String),
    candidate_version Nullable(String),
    occurred_at       DateTime64(3, 'UTC'),
    _topic            LowCardinality(String),
    _partition        UInt16,
    _offset           UInt64,
    ingested_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (model, trigger_id, sequence, event_id)
TTL toDateTime(occurred_at) + INTERVAL 730 DAY;

ALTER TABLE {db}.dead_letters ADD COLUMN IF NOT EXISTS _topic LowCardinality(String) DEFAULT '';

ALTER TABLE {db}.dead_letters ADD COLUMN IF NOT EXISTS _partition UInt16 DEFAULT 0;

ALTER TABLE {db}.dead_letters ADD COLUMN IF NOT EXISTS _offset UInt64 DEFAULT 0;

-- One row per request with its (primary) answer: what SREs usually want.
CREATE VIEW IF NOT EXISTS {db}.inference_log AS
SELECT
    r.request_id AS request_id, q.created_at AS created_at, r.served_at AS served_at,
    r.model AS model, r.model_version AS model_version, r.tenant AS tenant, r.user AS user,
    r.latency_ms AS latency_ms, r.time_to_first_token_ms AS time_to_first_token_ms,
    r.input_tokens AS input_tokens, r.output_tokens AS output_tokens, r.mean_logprob AS confidence,
    r.status AS status, r.finish_reason AS finish_reason, r.error_type AS error_type,
    r.trace_id AS trace_id, q.prompt AS prompt, r.output AS output, r.replica AS replica
FROM {db}.inference_responses AS r
LEFT JOIN {db}.inference_requests AS q ON q.request_id = r.request_id
WHERE NOT r.shadow;
