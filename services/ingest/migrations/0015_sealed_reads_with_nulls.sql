-- Reading a sealed text failed whenever a block held a NULL beside a sealed value (an
-- answer's error_message beside an error, a tenant that stores no text beside one that
-- does, texts cleared by expire-texts): ClickHouse runs tryDecrypt over the NULL rows' empty
-- defaults too and then masks them, and an empty IV is an error ("Invalid IV size 0"),
-- not a NULL. The IV of a NULL is now 12 zero bytes: the row still reads as NULL, and a
-- query over mixed rows reads every text its key opens. Same columns, same comments.

ALTER TABLE {db}.inference_requests
    MODIFY COLUMN prompt Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(prompt_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(prompt_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'PII-protected per tenant policy, sealed with the subject key; NULL when not stored or erased',
    MODIFY COLUMN system_prompt Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(system_prompt_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(system_prompt_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'PII-protected per tenant policy, sealed with the subject key; NULL when not stored or erased',
    MODIFY COLUMN metadata        Map(LowCardinality(String), Nullable(String)) ALIAS mapApply((k, v) -> (k, tryDecrypt('aes-256-gcm', substring(v, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(v, ''), repeat(char(0), 12)), 1, 12))), metadata_ct) COMMENT 'values sealed like the texts',
    MODIFY COLUMN user_id Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(user_id_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(user_id_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'the user id in clear, for tenants whose policy keeps it; NULL otherwise or once erased';

ALTER TABLE {db}.inference_responses
    MODIFY COLUMN output Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(output_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(output_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'PII-protected per tenant policy, sealed with the subject key; NULL when not stored or erased',
    MODIFY COLUMN error_message Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(error_message_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(error_message_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'sealed like output',
    MODIFY COLUMN user_id Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(user_id_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(user_id_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'the user id in clear, for tenants whose policy keeps it; NULL otherwise or once erased';

ALTER TABLE {db}.feedback
    MODIFY COLUMN label Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(label_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(label_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'PII-protected per tenant policy, sealed with the subject key; NULL when not stored or erased',
    MODIFY COLUMN comment Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(comment_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(comment_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'PII-protected per tenant policy, sealed with the subject key; NULL when not stored or erased',
    MODIFY COLUMN user_id Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(user_id_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(user_id_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'the user id in clear, for tenants whose policy keeps it; NULL otherwise or once erased';

ALTER TABLE {db}.dead_letters
    MODIFY COLUMN original_key Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(original_key_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(original_key_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'the original record, protected per its tenant policy and sealed with its subject key',
    MODIFY COLUMN original_value Nullable(String) ALIAS tryDecrypt('aes-256-gcm', substring(original_value_ct, 13), unhex(dictGet('{db}.subject_keys', 'key', subject_id)), substring(concat(ifNull(original_value_ct, ''), repeat(char(0), 12)), 1, 12)) COMMENT 'the original record, protected per its tenant policy and sealed with its subject key';
