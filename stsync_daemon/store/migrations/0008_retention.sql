-- Totals of finished syncs per (credential, data type, status): what `stsyncctl status` sums up when
-- no time window is asked for, so that it stays fast however long the sync log is. Kept equal to the
-- log by statement triggers, whoever writes it (a sync's end, retention, an operator's DELETE).
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

-- Rows written or deleted in bulk (a bulk load, retention's batches): one pass per statement.
CREATE OR REPLACE FUNCTION stsync.sync_totals_follow() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- No insert here: the totals row exists, unless its credential is being deleted and took
        -- it along.
        UPDATE stsync.sync_totals t SET syncs = t.syncs - g.n, records = t.records - g.records,
            failed_records = t.failed_records - g.failed, seconds = t.seconds - g.seconds
        FROM (SELECT credential_id, data_type, status, count(*) AS n,
                     coalesce(sum(records_processed), 0) AS records,
                     coalesce(sum(records_failed), 0) AS failed,
                     coalesce(sum(extract(epoch FROM completed_at - started_at)), 0) AS seconds
              FROM gone WHERE status <> 'running'
              GROUP BY credential_id, data_type, status) g
        WHERE t.credential_id = g.credential_id AND t.data_type = g.data_type
          AND t.status = g.status;
    ELSE
        INSERT INTO stsync.sync_totals AS t (credential_id, data_type, status, syncs, records,
                                             failed_records, seconds)
        SELECT credential_id, data_type, status, count(*), coalesce(sum(records_processed), 0),
               coalesce(sum(records_failed), 0),
               coalesce(sum(extract(epoch FROM completed_at - started_at)), 0)
        FROM came WHERE status <> 'running'
        GROUP BY credential_id, data_type, status
        ON CONFLICT (credential_id, data_type, status) DO UPDATE SET
            syncs = t.syncs + excluded.syncs, records = t.records + excluded.records,
            failed_records = t.failed_records + excluded.failed_records,
            seconds = t.seconds + excluded.seconds;
    END IF;
    RETURN NULL;
END
$$;

-- A row updated: a sync's end (running -> finished), or an edit of a finished row. The per-batch
-- counter updates of running syncs (the hot path) do not even call it (see the trigger's WHEN).
CREATE OR REPLACE FUNCTION stsync.sync_totals_follow_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'running' THEN
        UPDATE stsync.sync_totals SET syncs = syncs - 1,
            records = records - OLD.records_processed,
            failed_records = failed_records - OLD.records_failed,
            seconds = seconds - coalesce(extract(epoch FROM OLD.completed_at - OLD.started_at), 0)
        WHERE credential_id = OLD.credential_id AND data_type = OLD.data_type
          AND status = OLD.status;
    END IF;
    IF NEW.status <> 'running' THEN
        INSERT INTO stsync.sync_totals AS t (credential_id, data_type, status, syncs, records,
                                             failed_records, seconds)
        VALUES (NEW.credential_id, NEW.data_type, NEW.status, 1, NEW.records_processed,
                NEW.records_failed,
                coalesce(extract(epoch FROM NEW.completed_at - NEW.started_at), 0))
        ON CONFLICT (credential_id, data_type, status) DO UPDATE SET
            syncs = t.syncs + 1, records = t.records + excluded.records,
            failed_records = t.failed_records + excluded.failed_records,
            seconds = t.seconds + excluded.seconds;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER sync_totals_insert AFTER INSERT ON stsync.sync_log
    REFERENCING NEW TABLE AS came FOR EACH STATEMENT EXECUTE FUNCTION stsync.sync_totals_follow();
CREATE TRIGGER sync_totals_update AFTER UPDATE ON stsync.sync_log
    FOR EACH ROW WHEN (OLD.status <> 'running' OR NEW.status <> 'running')
    EXECUTE FUNCTION stsync.sync_totals_follow_row();
CREATE TRIGGER sync_totals_delete AFTER DELETE ON stsync.sync_log
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION stsync.sync_totals_follow();

-- Retention prunes resolved dead letters by when they were resolved.
CREATE INDEX IF NOT EXISTS dead_letters_resolved_idx ON stsync.dead_letters (resolved_at)
    WHERE resolved_at IS NOT NULL;
