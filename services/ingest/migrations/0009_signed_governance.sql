-- RetrainingTrigger v2 and ModelVersion v2: the signatures that make an approval, a
-- registration or a status change provable. Stored as the record carried them, as JSON
-- ({"alg", "key_id", "signed_at", "fields_version", "value"}), with the signing key's id
-- beside it for queries. Rows of v1 records have none.
ALTER TABLE {db}.retraining_triggers ADD COLUMN IF NOT EXISTS signed_by LowCardinality(String) DEFAULT '' AFTER candidate_version;
ALTER TABLE {db}.retraining_triggers ADD COLUMN IF NOT EXISTS signature String DEFAULT '' AFTER signed_by;
ALTER TABLE {db}.model_registry ADD COLUMN IF NOT EXISTS signed_by LowCardinality(String) DEFAULT '' AFTER comment;
ALTER TABLE {db}.model_registry ADD COLUMN IF NOT EXISTS signature String DEFAULT '' AFTER signed_by;
ALTER TABLE {db}.model_registry ADD COLUMN IF NOT EXISTS artifact_signed_by LowCardinality(String) DEFAULT '' AFTER signature;
ALTER TABLE {db}.model_registry ADD COLUMN IF NOT EXISTS artifact_signature String DEFAULT '' AFTER artifact_signed_by;
