-- Dead letters keep what PostgreSQL cannot store: the record's JSON text exactly as received
-- (`raw`, bytes: a NUL or a lone surrogate is refused by jsonb and text), `payload` only when jsonb
-- accepts it. A dead letter is resolved when a later sync stores the same record.
ALTER TABLE stsync.dead_letters ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE stsync.dead_letters ADD COLUMN raw bytea;
ALTER TABLE stsync.dead_letters ADD COLUMN resolved_at timestamptz;
UPDATE stsync.dead_letters SET raw = convert_to(payload::text, 'UTF8') WHERE raw IS NULL;
CREATE INDEX dead_letters_open_idx ON stsync.dead_letters (credential_id, data_type, record_id)
    WHERE resolved_at IS NULL;

-- Where a restart by date may begin: the high-water mark of the last completed pass (never past
-- the start of that pass, nor past now). NULL: no pass completed yet, restart from the beginning.
ALTER TABLE stsync.cursors ADD COLUMN safe_through timestamptz;
UPDATE stsync.cursors SET safe_through = least(max_modified_on, last_success_at)
WHERE last_success_at IS NOT NULL;

-- Failures of the daemon's own configuration (secrets key, global app key) are not the tenant's.
ALTER TABLE stsync.sync_log DROP CONSTRAINT sync_log_error_category_check;
ALTER TABLE stsync.sync_log ADD CONSTRAINT sync_log_error_category_check
    CHECK (error_category IN ('auth', 'api', 'rate_limit', 'timeout', 'network', 'database',
                              'validation', 'configuration', 'unexpected'));
