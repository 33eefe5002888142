-- The replica's CPU and GPU utilisation on every answer (InferenceResponse v2).
-- What each answer cost (InferenceResponse v2 `cost`, from the inference service's price
-- table; docs/inference.md#cost), and spend per tenant, model, version and day. Rows
-- without a price (older producers, unpriced models) have NULL and count no spend.

ALTER TABLE {db}.inference_responses
    ADD COLUMN IF NOT EXISTS cost Nullable(Float64) COMMENT 'the answer''s cost in the price currency; NULL without a price' AFTER guard_verdict,
    ADD COLUMN IF NOT EXISTS replica_cpu_percent Nullable(Float64) COMMENT 'CPU the replica used since its previous answer, percent of one core' AFTER replica_gpu_memory_bytes,
    ADD COLUMN IF NOT EXISTS replica_gpu_utilization Nullable(Float64) COMMENT 'GPU engines: utilisation of the replica GPU (NVML), percent' AFTER replica_cpu_percent;

--   SELECT day, tenant, model, sum(cost) FROM argus.inference_spend_1d GROUP BY day, tenant, model
CREATE TABLE IF NOT EXISTS {db}.inference_spend_1d
(
    day             Date,
    tenant          LowCardinality(String),
    model           LowCardinality(String),
    model_version   LowCardinality(String),
    answers         SimpleAggregateFunction(sum, UInt64),
    priced          SimpleAggregateFunction(sum, UInt64),
    input_tokens    SimpleAggregateFunction(sum, UInt64),
    output_tokens   SimpleAggregateFunction(sum, UInt64),
    cost            SimpleAggregateFunction(sum, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (tenant, model, model_version, day)
TTL day + INTERVAL 800 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.inference_spend_1d_mv TO {db}.inference_spend_1d AS
SELECT
    toDate(served_at) AS day,
    tenant, model, model_version,
    toUInt64(count()) AS answers,
    toUInt64(countIf(r.cost IS NOT NULL)) AS priced,
    toUInt64(sum(input_tokens)) AS input_tokens,
    toUInt64(sum(output_tokens)) AS output_tokens,
    sum(ifNull(r.cost, 0)) AS cost  -- r.cost: the column, not this alias
FROM {db}.inference_responses AS r
WHERE NOT shadow
GROUP BY day, tenant, model, model_version;

-- inference_log gains the verdict and the cost, and shows one row per request
CREATE OR REPLACE VIEW {db}.inference_log AS
SELECT
    r.request_id AS request_id, q.created_at AS created_at, r.served_at AS served_at,
    r.model AS model, r.model_version AS model_version, r.tenant AS tenant, r.user AS user,
    r.latency_ms AS latency_ms, r.time_to_first_token_ms AS time_to_first_token_ms,
    r.input_tokens AS input_tokens, r.output_tokens AS output_tokens, r.mean_logprob AS confidence,
    r.status AS status, r.finish_reason AS finish_reason, r.error_type AS error_type,
    r.trace_id AS trace_id, q.prompt AS prompt, r.output AS output, r.replica AS replica,
    r.guard_action AS guard_action, r.guard_verdict AS guard_verdict, r.cost AS cost
-- one row per request id: FINAL folds an answer written twice (its id is derived from the
-- request id), ANY joins one request row when a producer's retry delivered it twice
FROM {db}.inference_responses AS r FINAL
LEFT ANY JOIN {db}.inference_requests AS q ON q.request_id = r.request_id
WHERE NOT r.shadow;
