-- DriftEvent v2: an event says whether a drift started or ended, which way it went, and
-- the episode it belongs to (the event_id of its started event). Rows of v1 events read
-- as started, with no direction and no episode.
ALTER TABLE {db}.drift_events ADD COLUMN IF NOT EXISTS status LowCardinality(String) DEFAULT 'started' AFTER detector_params;
ALTER TABLE {db}.drift_events ADD COLUMN IF NOT EXISTS direction LowCardinality(String) DEFAULT '' AFTER status;
ALTER TABLE {db}.drift_events ADD COLUMN IF NOT EXISTS episode_id Nullable(UUID) AFTER direction;
