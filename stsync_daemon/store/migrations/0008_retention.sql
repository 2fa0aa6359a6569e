-- Totals of finished syncs per (credential, data type, status): what `stsyncctl status` sums up when
-- no time window is asked for, so that it stays fast however long the sync log is. Kept equal to the
-- log: the statements that end a sync add to them, retention's pruning takes away.
CREATE TABLE IF NOT EXISTS stsync.sync_totals (
    credential_id  uuid NOT NULL REFERENCES stsync.credentials (id) ON DELETE CASCADE,
    data_type      text NOT NULL,
    status         text NOT NULL,
    syncs          bigint NOT NULL DEFAULT 0,
    records        bigint NOT NULL DEFAULT 0,
    failed_records bigint NOT NULL DEFAULT 0,
    seconds        double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (credential_id, data_type, status)
);

INSERT INTO stsync.sync_totals (credential_id, data_type, status, syncs, records, failed_records,
                                seconds)
SELECT credential_id, data_type, status, count(*), coalesce(sum(records_processed), 0),
       coalesce(sum(records_failed), 0),
       coalesce(sum(extract(epoch FROM completed_at - started_at)), 0)
FROM stsync.sync_log
WHERE status <> 'running'
GROUP BY credential_id, data_type, status
ON CONFLICT DO NOTHING;

-- Retention prunes resolved dead letters by when they were resolved.
CREATE INDEX IF NOT EXISTS dead_letters_resolved_idx ON stsync.dead_letters (resolved_at)
    WHERE resolved_at IS NOT NULL;
