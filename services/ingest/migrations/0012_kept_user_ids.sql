-- A tenant whose PII policy keeps `user` (PiiPolicy.keep_user; docs/privacy.md) has its
-- users' ids stored as well as the keyed pseudonym in `user`: sealed with the subject key
-- like every text (user_id_ct), opened by the ALIAS user_id while the key exists, so an
-- erasure makes them unreadable with the rest and a role without text access reads none.
-- Other tenants' rows, and every row written before this migration, have NULL there.

ALTER TABLE {db}.inference_requests
    ADD COLUMN IF NOT EXISTS user_id_in Nullable(String) EPHEMERAL NULL AFTER user,
    ADD COLUMN IF NOT EXISTS user_id_ct Nullable(String) DEFAULT if(user_id_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, user_id_in)), 1, 12), encrypt('aes-256-gcm', user_id_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, user_id_in)), 1, 12)))) AFTER user_id_in,
    ADD COLUMN IF NOT EXISTS user_id Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(user_id_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(user_id_ct, 1, 12)) COMMENT 'the user id in clear, for tenants whose policy keeps it; NULL otherwise or once erased' AFTER user_id_ct;

ALTER TABLE {db}.inference_responses
    ADD COLUMN IF NOT EXISTS user_id_in Nullable(String) EPHEMERAL NULL AFTER user,
    ADD COLUMN IF NOT EXISTS user_id_ct Nullable(String) DEFAULT if(user_id_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, user_id_in)), 1, 12), encrypt('aes-256-gcm', user_id_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, user_id_in)), 1, 12)))) AFTER user_id_in,
    ADD COLUMN IF NOT EXISTS user_id Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(user_id_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(user_id_ct, 1, 12)) COMMENT 'the user id in clear, for tenants whose policy keeps it; NULL otherwise or once erased' AFTER user_id_ct;

ALTER TABLE {db}.feedback
    ADD COLUMN IF NOT EXISTS user_id_in Nullable(String) EPHEMERAL NULL AFTER user,
    ADD COLUMN IF NOT EXISTS user_id_ct Nullable(String) DEFAULT if(user_id_in IS NULL, NULL, concat(substring(SHA256(concat(subject_key_bytes, user_id_in)), 1, 12), encrypt('aes-256-gcm', user_id_in, subject_key_bytes, substring(SHA256(concat(subject_key_bytes, user_id_in)), 1, 12)))) AFTER user_id_in,
    ADD COLUMN IF NOT EXISTS user_id Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(user_id_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(user_id_ct, 1, 12)) COMMENT 'the user id in clear, for tenants whose policy keeps it; NULL otherwise or once erased' AFTER user_id_ct;
