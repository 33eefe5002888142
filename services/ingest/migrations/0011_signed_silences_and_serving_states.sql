-- Silence v2 and ServingState v3. A silence is signed by its author (operator or
-- approver role); the alerting service applies no other.
-- ServingState v3: a desired state is signed by who asked for it (the retraining service,
-- or an operator); the inference service refuses one no trusted key signed. Stored as the
-- record carried it (JSON), with the signing key's id beside it. Answers (applied,
-- failed) and rows of v1/v2 records have none.
ALTER TABLE {db}.serving_state ADD COLUMN IF NOT EXISTS signed_by LowCardinality(String) DEFAULT '' AFTER comment;
ALTER TABLE {db}.serving_state ADD COLUMN IF NOT EXISTS signature String DEFAULT '' AFTER signed_by;
ALTER TABLE {db}.alert_silences ADD COLUMN IF NOT EXISTS signed_by LowCardinality(String) DEFAULT '' AFTER comment;
ALTER TABLE {db}.alert_silences ADD COLUMN IF NOT EXISTS signature String DEFAULT '' AFTER signed_by;
