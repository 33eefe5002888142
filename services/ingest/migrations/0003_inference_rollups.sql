-- Per-minute rollups of primary (non-shadow) answers by model, version and tenant,
-- maintained by a materialized view on insert. Query with the -Merge combinators:
--   SELECT minute, sum(requests), quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_ms_q) ...
CREATE TABLE IF NOT EXISTS {db}.inference_rollup_1m
(
    minute          DateTime('UTC'),
    model           LowCardinality(String),
    model_version   LowCardinality(String),
    tenant          LowCardinality(String),
    requests        SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    deadline_exceeded SimpleAggregateFunction(sum, UInt64),
    input_tokens    SimpleAggregateFunction(sum, UInt64),
    output_tokens   SimpleAggregateFunction(sum, UInt64),
    latency_ms_q    AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float64),
    ttft_ms_q       AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64),
    confidence_avg  AggregateFunction(avg, Float64),
    confidence_q    AggregateFunction(quantilesTDigest(0.05, 0.5), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (model, model_version, tenant, minute)
TTL minute + INTERVAL 400 DAY;

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
