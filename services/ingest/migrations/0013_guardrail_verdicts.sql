-- Guard-rail verdicts (InferenceResponse v2; docs/guardrails.md). Every answer says what
-- the rails did (guard_action: allow | flag | redact | block) and how (guard_verdict:
-- the verdict as JSON, never the text a rail found). Rows written before this migration,
-- by older producers, and shadow answers have NULL in both.

ALTER TABLE {db}.inference_responses
    ADD COLUMN IF NOT EXISTS guard_action LowCardinality(Nullable(String)) COMMENT 'what the guard rails did: allow | flag | redact | block; NULL when no rail ran' AFTER span_id,
    ADD COLUMN IF NOT EXISTS guard_verdict Nullable(String) CODEC(ZSTD(3)) COMMENT 'the verdict as JSON: rails[] with guard, version, digest, score, action, elapsed_ms, error' AFTER guard_action;

-- Per-minute counts of verdicts by model, version, tenant and rail: rail '*' counts
-- answers by their overall action; every other rail (input.injection, input.pii,
-- output.deny, output.pii, output.offensive) counts the answers it ran on, by the action
-- it took, with how often it triggered, failed (error or time budget) and its time.
--   SELECT tenant, sum(responses) FROM argus.guardrail_verdicts_1m
--   WHERE rail = '*' AND action = 'block' AND minute > now() - INTERVAL 1 HOUR GROUP BY tenant
CREATE TABLE IF NOT EXISTS {db}.guardrail_verdicts_1m
(
    minute          DateTime('UTC'),
    model           LowCardinality(String),
    model_version   LowCardinality(String),
    tenant          LowCardinality(String),
    rail            LowCardinality(String),
    action          LowCardinality(String),
    responses       SimpleAggregateFunction(sum, UInt64),
    triggered       SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    elapsed_ms_sum  SimpleAggregateFunction(sum, Float64),
    elapsed_ms_max  SimpleAggregateFunction(max, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (model, model_version, tenant, rail, action, minute)
TTL minute + INTERVAL 400 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.guardrail_verdicts_1m_mv TO {db}.guardrail_verdicts_1m AS
SELECT
    toStartOfMinute(served_at) AS minute,
    model, model_version, tenant,
    '*' AS rail,
    assumeNotNull(guard_action) AS action,
    toUInt64(count()) AS responses,
    toUInt64(countIf(guard_action != 'allow')) AS triggered,
    toUInt64(countIf(arrayExists(x -> JSONExtractString(x, 'error') != '', JSONExtractArrayRaw(ifNull(guard_verdict, '{}'), 'rails')))) AS errors,
    sum(JSONExtractFloat(ifNull(guard_verdict, '{}'), 'elapsed_ms')) AS elapsed_ms_sum,
    max(JSONExtractFloat(ifNull(guard_verdict, '{}'), 'elapsed_ms')) AS elapsed_ms_max
FROM {db}.inference_responses
WHERE NOT shadow AND guard_action IS NOT NULL
GROUP BY minute, model, model_version, tenant, action;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.guardrail_rails_1m_mv TO {db}.guardrail_verdicts_1m AS
SELECT
    toStartOfMinute(served_at) AS minute,
    model, model_version, tenant,
    JSONExtractString(r, 'rail') AS rail,
    JSONExtractString(r, 'action') AS action,
    toUInt64(count()) AS responses,
    toUInt64(countIf(JSONExtractBool(r, 'triggered'))) AS triggered,
    toUInt64(countIf(JSONExtractString(r, 'error') != '')) AS errors,
    sum(JSONExtractFloat(r, 'elapsed_ms')) AS elapsed_ms_sum,
    max(JSONExtractFloat(r, 'elapsed_ms')) AS elapsed_ms_max
FROM {db}.inference_responses
ARRAY JOIN JSONExtractArrayRaw(ifNull(guard_verdict, '{}'), 'rails') AS r
WHERE NOT shadow AND guard_action IS NOT NULL
GROUP BY minute, model, model_version, tenant, rail, action;
