-- Texts sealed with per-subject keys (crypto-shredding; docs/privacy.md).
--
-- Every text that can hold personal data is stored as AES-256-GCM ciphertext (<name>_ct:
-- a 12-byte IV, then ciphertext and tag) under the data key of the row's subject:
-- (tenant, user), or (tenant, 'request:' || request_id) when no user is given. Ingest
-- inserts the clear text into an EPHEMERAL <name>_in column; the DEFAULT of <name>_ct
-- seals it in ClickHouse with the key the key service hands to the dictionary
-- subject_keys_ensure (created on first use). <name> is an ALIAS that opens it with the
-- key of subject_keys: SELECT prompt reads text while the key exists, NULL once it is
-- destroyed. A subject id longer than 256 bytes is replaced by 'sha256:' || its digest
-- (services.common.subject_keys.bounded_subject does the same for `argus privacy`). The IV is SHA-256(key || text): unique per distinct text under one key, and
-- unrelated to the text without the key. `user` is the subject's keyed pseudonym.
-- Both dictionaries are (re)created by every migration run (services/common/subject_keys.py),
-- before this file: their source URL and token are deployment settings.
--
-- The tables are rebuilt (the old rows copied through the sealing path, so nothing stays
-- in clear) and swapped in; the rollup view is re-attached to the new responses table.

DROP VIEW IF EXISTS {db}.inference_rollup_1m_mv;

CREATE TABLE {db}.inference_requests_sealed
(
    request_id      UUID,
    created_at      DateTime64(3, 'UTC'),
    model           LowCardinality(String),
    tenant          LowCardinality(String),
    user_in Nullable(String) EPHEMERAL,
    subject_key Tuple(String, String) EPHEMERAL dictGet('{db}.subject_keys_ensure', ('subject_id', 'key'), (tenant, if(length(ifNull(user_in, concat('request:', toString(request_id)))) <= 256, ifNull(user_in, concat('request:', toString(request_id))), concat('sha256:', lower(hex(SHA256(ifNull(user_in, concat('request:', toString(request_id)))))))))),
    subject_key_bytes String EPHEMERAL unhex(tupleElement(subject_key, 2)),
    subject_id String DEFAULT tupleElement(subject_key, 1) COMMENT 'the data subject (keyed pseudonym); its key decrypts the texts',
    user Nullable(String) DEFAULT if(user_in IS NULL, NULL, subject_id) COMMENT 'keyed pseudonym of the user (argus privacy subject)',
    prompt_in Nullable(String) EPHEMERAL,
    prompt_ct Nullable(String) DEFAULT if(prompt_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, prompt_in)), 1, 12), encrypt('aes-256-gcm', prompt_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, prompt_in)), 1, 12)))),
    prompt Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(prompt_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(prompt_ct, 1, 12)) COMMENT 'PII-protected per tenant policy, sealed with the subject key; NULL when not stored or erased',
    system_prompt_in Nullable(String) EPHEMERAL,
    system_prompt_ct Nullable(String) DEFAULT if(system_prompt_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, system_prompt_in)), 1, 12), encrypt('aes-256-gcm', system_prompt_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, system_prompt_in)), 1, 12)))),
    system_prompt Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(system_prompt_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(system_prompt_ct, 1, 12)) COMMENT 'PII-protected per tenant policy, sealed with the subject key; NULL when not stored or erased',
    message_count   UInt16,
    prompt_chars    UInt32,
    max_tokens      Nullable(UInt32),
    temperature     Nullable(Float32),
    top_p           Nullable(Float32),
    deadline        Nullable(DateTime64(3, 'UTC')),
    trace_id        Nullable(String),
    span_id         Nullable(String),
    metadata_in     Map(LowCardinality(String), String) EPHEMERAL,
    metadata_ct     Map(LowCardinality(String), String) DEFAULT mapApply((k, v) -> (k, if(v IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, v)), 1, 12), encrypt('aes-256-gcm', v, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, v)), 1, 12))))), metadata_in),
    metadata        Map(LowCardinality(String), Nullable(String)) ALIAS mapApply((k, v) -> (k, tryDecrypt('aes-256-gcm', substring(v, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(v, 1, 12))), metadata_ct) COMMENT 'values sealed like the texts',
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

INSERT INTO {db}.inference_requests_sealed
    (request_id, created_at, model, tenant, user_in, prompt_in, system_prompt_in, message_count, prompt_chars,
     max_tokens, temperature, top_p, deadline, trace_id, span_id, metadata_in, pii_counts, _topic, _partition, _offset, ingested_at)
SELECT request_id, created_at, model, tenant, user, prompt, system_prompt, message_count, prompt_chars,
     max_tokens, temperature, top_p, deadline, trace_id, span_id, metadata, pii_counts, _topic, _partition, _offset, ingested_at
FROM {db}.inference_requests;

EXCHANGE TABLES {db}.inference_requests AND {db}.inference_requests_sealed;

DROP TABLE {db}.inference_requests_sealed SYNC;

CREATE TABLE {db}.inference_responses_sealed
(
    request_id              UUID,
    response_id             UUID,
    served_at               DateTime64(3, 'UTC'),
    model                   LowCardinality(String),
    response_model          LowCardinality(String),
    model_version           LowCardinality(String),
    tenant                  LowCardinality(String),
    user_in Nullable(String) EPHEMERAL,
    subject_key Tuple(String, String) EPHEMERAL dictGet('{db}.subject_keys_ensure', ('subject_id', 'key'), (tenant, if(length(ifNull(user_in, concat('request:', toString(request_id)))) <= 256, ifNull(user_in, concat('request:', toString(request_id))), concat('sha256:', lower(hex(SHA256(ifNull(user_in, concat('request:', toString(request_id)))))))))),
    subject_key_bytes String EPHEMERAL unhex(tupleElement(subject_key, 2)),
    subject_id String DEFAULT tupleElement(subject_key, 1) COMMENT 'the data subject (keyed pseudonym); its key decrypts the texts',
    user Nullable(String) DEFAULT if(user_in IS NULL, NULL, subject_id) COMMENT 'keyed pseudonym of the user (argus privacy subject)',
    output_in Nullable(String) EPHEMERAL,
    output_ct Nullable(String) DEFAULT if(output_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, output_in)), 1, 12), encrypt('aes-256-gcm', output_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, output_in)), 1, 12)))),
    output Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(output_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(output_ct, 1, 12)) COMMENT 'PII-protected per tenant policy, sealed with the subject key; NULL when not stored or erased',
    output_chars            UInt32,
    finish_reason           LowCardinality(Nullable(String)),
    input_tokens            UInt32,
    output_tokens           UInt32,
    latency_ms              Float64,
    time_to_first_token_ms  Nullable(Float64),
    mean_logprob            Nullable(Float64),
    status                  Enum8('ok' = 1, 'error' = 2, 'deadline_exceeded' = 3, 'rejected' = 4),
    error_type              LowCardinality(Nullable(String)),
    error_message_in Nullable(String) EPHEMERAL,
    error_message_ct Nullable(String) DEFAULT if(error_message_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, error_message_in)), 1, 12), encrypt('aes-256-gcm', error_message_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, error_message_in)), 1, 12)))),
    error_message Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(error_message_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(error_message_ct, 1, 12)) COMMENT 'sealed like output',
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

INSERT INTO {db}.inference_responses_sealed
    (request_id, response_id, served_at, model, response_model, model_version, tenant, user_in, output_in, output_chars,
     finish_reason, input_tokens, output_tokens, latency_ms, time_to_first_token_ms, mean_logprob, status, error_type,
     error_message_in, replica, replica_cpu_memory_bytes, replica_gpu_memory_bytes, shadow, trace_id, span_id,
     pii_counts, _topic, _partition, _offset, ingested_at)
SELECT request_id, response_id, served_at, model, response_model, model_version, tenant, user, output, output_chars,
     finish_reason, input_tokens, output_tokens, latency_ms, time_to_first_token_ms, mean_logprob, status, error_type,
     error_message, replica, replica_cpu_memory_bytes, replica_gpu_memory_bytes, shadow, trace_id, span_id,
     pii_counts, _topic, _partition, _offset, ingested_at
FROM {db}.inference_responses;

EXCHANGE TABLES {db}.inference_responses AND {db}.inference_responses_sealed;

DROP TABLE {db}.inference_responses_sealed SYNC;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.inference_rollup_1m_mv TO {db}.inference_rollup_1m AS
SELECT
    toStartOfMinute(served_at) AS minute,
    model, model_version, tenant,
    toUInt64(count()) AS requests,
    toUInt64(countIf(status = 'error')) AS errors,
    toUInt64(countIf(status = 'deadline_exceeded')) AS deadline_exceeded,
    toUInt64(sum(input_tokens)) AS input_tokens,
    toUInt64(sum(output_tokens)) AS output_tokens,
    quantilesTDigestState(0.5, 0.9, 0.95, 0.99)(latency_ms) AS latency_ms_q,
    quantilesTDigestStateIf(0.5, 0.95, 0.99)(assumeNotNull(time_to_first_token_ms), time_to_first_token_ms IS NOT NULL) AS ttft_ms_q,
    avgStateIf(assumeNotNull(mean_logprob), mean_logprob IS NOT NULL) AS confidence_avg,
    quantilesTDigestStateIf(0.05, 0.5)(assumeNotNull(mean_logprob), mean_logprob IS NOT NULL) AS confidence_q
FROM {db}.inference_responses
WHERE NOT shadow
GROUP BY minute, model, model_version, tenant;

CREATE TABLE {db}.feedback_sealed
(
    feedback_id  UUID,
    request_id   UUID,
    created_at   DateTime64(3, 'UTC'),
    tenant       LowCardinality(String),
    user_in Nullable(String) EPHEMERAL,
    subject_key Tuple(String, String) EPHEMERAL dictGet('{db}.subject_keys_ensure', ('subject_id', 'key'), (tenant, if(length(ifNull(user_in, concat('request:', toString(request_id)))) <= 256, ifNull(user_in, concat('request:', toString(request_id))), concat('sha256:', lower(hex(SHA256(ifNull(user_in, concat('request:', toString(request_id)))))))))),
    subject_key_bytes String EPHEMERAL unhex(tupleElement(subject_key, 2)),
    subject_id String DEFAULT tupleElement(subject_key, 1) COMMENT 'the data subject (keyed pseudonym); its key decrypts the texts',
    user Nullable(String) DEFAULT if(user_in IS NULL, NULL, subject_id) COMMENT 'keyed pseudonym of the user (argus privacy subject)',
    kind         LowCardinality(String),
    score        Nullable(Float64),
    label_in Nullable(String) EPHEMERAL,
    label_ct Nullable(String) DEFAULT if(label_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, label_in)), 1, 12), encrypt('aes-256-gcm', label_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, label_in)), 1, 12)))),
    label Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(label_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(label_ct, 1, 12)) COMMENT 'PII-protected per tenant policy, sealed with the subject key; NULL when not stored or erased',
    comment_in Nullable(String) EPHEMERAL,
    comment_ct Nullable(String) DEFAULT if(comment_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, comment_in)), 1, 12), encrypt('aes-256-gcm', comment_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, comment_in)), 1, 12)))),
    comment Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(comment_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(comment_ct, 1, 12)) COMMENT 'PII-protected per tenant policy, sealed with the subject key; NULL when not stored or erased',
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

INSERT INTO {db}.feedback_sealed
    (feedback_id, request_id, created_at, tenant, user_in, kind, score, label_in, comment_in, source, pii_counts,
     _topic, _partition, _offset, ingested_at)
SELECT feedback_id, request_id, created_at, tenant, user, kind, score, label, comment, source, pii_counts,
     _topic, _partition, _offset, ingested_at
FROM {db}.feedback;

EXCHANGE TABLES {db}.feedback AND {db}.feedback_sealed;

DROP TABLE {db}.feedback_sealed SYNC;

CREATE TABLE {db}.dead_letters_sealed
(
    original_topic      LowCardinality(String),
    original_partition  UInt32,
    original_offset     UInt64,
    tenant              LowCardinality(String) COMMENT 'the tenant of the original record; empty when it did not decode',
    subject_in          String EPHEMERAL,
    user_in Nullable(String) EPHEMERAL,
    subject_key Tuple(String, String) EPHEMERAL dictGet('{db}.subject_keys_ensure', ('subject_id', 'key'), (tenant, if(length(subject_in) <= 256, subject_in, concat('sha256:', lower(hex(SHA256(subject_in))))))),
    subject_key_bytes String EPHEMERAL unhex(tupleElement(subject_key, 2)),
    subject_id String DEFAULT tupleElement(subject_key, 1) COMMENT 'the data subject (keyed pseudonym); its key decrypts the texts',
    user Nullable(String) DEFAULT if(user_in IS NULL, NULL, subject_id) COMMENT 'keyed pseudonym of the user (argus privacy subject)',
    original_key_in Nullable(String) EPHEMERAL,
    original_key_ct Nullable(String) DEFAULT if(original_key_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, original_key_in)), 1, 12), encrypt('aes-256-gcm', original_key_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, original_key_in)), 1, 12)))),
    original_key Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(original_key_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(original_key_ct, 1, 12)) COMMENT 'the original record, protected per its tenant policy and sealed with its subject key',
    original_value_in Nullable(String) EPHEMERAL,
    original_value_ct Nullable(String) DEFAULT if(original_value_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, original_value_in)), 1, 12), encrypt('aes-256-gcm', original_value_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, original_value_in)), 1, 12)))),
    original_value Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(original_value_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(original_value_ct, 1, 12)) COMMENT 'the original record, protected per its tenant policy and sealed with its subject key',
    original_timestamp  Nullable(DateTime64(3, 'UTC')),
    reason              String,
    error_type          LowCardinality(String),
    consumer_group      LowCardinality(String),
    service             LowCardinality(String),
    failed_at           DateTime64(3, 'UTC'),
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3),
    _topic              LowCardinality(String) DEFAULT '',
    _partition          UInt16 DEFAULT 0,
    _offset             UInt64 DEFAULT 0
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(failed_at)
ORDER BY (original_topic, original_partition, original_offset, consumer_group)
TTL toDateTime(failed_at) + INTERVAL 90 DAY;

INSERT INTO {db}.dead_letters_sealed
    (original_topic, original_partition, original_offset, tenant, subject_in, user_in, original_key_in, original_value_in,
     original_timestamp, reason, error_type, consumer_group, service, failed_at, inserted_at, _topic, _partition, _offset)
SELECT original_topic, original_partition, original_offset, '',
     concat('dead-letter:', original_topic, ':', toString(original_partition), ':', toString(original_offset)), NULL,
     original_key, original_value, original_timestamp, reason, error_type, consumer_group, service, failed_at,
     inserted_at, _topic, _partition, _offset
FROM {db}.dead_letters;

EXCHANGE TABLES {db}.dead_letters AND {db}.dead_letters_sealed;

DROP TABLE {db}.dead_letters_sealed SYNC;
