-- Named queries of the sync log, its cursors and dead letters (store/syncs.py).
-- Each block starts with `-- name: <name>` and a one-line description; store/sql.py loads them.
-- Parameters are always bound ($n), never formatted in.

-- name: start_sync
-- A sync's row, the cursor it resumes from, whether the tenant has records of the data type yet and
-- the credential's encrypted secrets, in one round trip (run once its lock is held, so the cursor
-- read is the last one committed). $6 is the mode: only incremental syncs resume. $10/$11: the
-- tenant's environment and id.
WITH cursor AS (
    SELECT continue_from, max_modified_on, safe_through, backfill_started_at, backfill_page_size,
           backfill_pages, backfill_done
    FROM stsync.cursors
    WHERE credential_id = $3 AND data_type = $4
), resume AS (
    SELECT CASE WHEN $6 = 'incremental' THEN nullif((SELECT continue_from FROM cursor), '') END
           AS continue_from
), sync AS (
    INSERT INTO stsync.sync_log (id, run_id, credential_id, data_type, trigger, mode, retry_of,
                                 attempt, started_from, instance, heartbeat_at)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8,
           CASE WHEN continue_from IS NULL THEN 'beginning' ELSE 'token' END, $9, now()
    FROM resume
    RETURNING started_at
)
SELECT sync.started_at, resume.continue_from,
       (SELECT max_modified_on FROM cursor) AS max_modified_on,
       (SELECT safe_through FROM cursor) AS safe_through,
       (SELECT backfill_started_at FROM cursor) AS backfill_started_at,
       (SELECT backfill_page_size FROM cursor) AS backfill_page_size,
       (SELECT backfill_pages FROM cursor) AS backfill_pages,
       (SELECT backfill_done FROM cursor) AS backfill_done,
       EXISTS (SELECT 1 FROM stsync.dead_letters d
               WHERE d.credential_id = $3 AND d.data_type = $4 AND d.resolved_at IS NULL)
           AS open_dead_letters,
       CASE WHEN $4 = 'customers'
            THEN EXISTS (SELECT 1 FROM servicetitan.customers
                         WHERE environment = $10 AND tenant_id = $11)
            ELSE EXISTS (SELECT 1 FROM servicetitan.invoices
                         WHERE environment = $10 AND tenant_id = $11)
       END AS has_records,
       k.client_secret_encrypted, k.app_key_encrypted
FROM sync, resume, stsync.credentials k
WHERE k.id = $3;

-- name: batch_committed
-- A committed batch's cursor and the sync log's counters, in one round trip. A modifiedOn in the
-- future (clock skew, bad data) never moves the high-water mark past now.
WITH cursor AS (
    INSERT INTO stsync.cursors (credential_id, data_type, continue_from, max_modified_on)
    VALUES ($1, $2, $3, least($4::timestamptz, now()))
    ON CONFLICT (credential_id, data_type) DO UPDATE SET
        continue_from = coalesce(excluded.continue_from, stsync.cursors.continue_from),
        max_modified_on = greatest(stsync.cursors.max_modified_on, excluded.max_modified_on),
        -- The first token after a backfill (its catch-up export's) ends it.
        backfill_started_at = CASE WHEN excluded.continue_from IS NULL
                                   THEN stsync.cursors.backfill_started_at END,
        backfill_page_size = CASE WHEN excluded.continue_from IS NULL
                                  THEN stsync.cursors.backfill_page_size END,
        backfill_pages = CASE WHEN excluded.continue_from IS NULL
                              THEN stsync.cursors.backfill_pages END,
        backfill_done = CASE WHEN excluded.continue_from IS NULL
                             THEN stsync.cursors.backfill_done ELSE '{}' END,
        updated_at = now()
)
UPDATE stsync.sync_log SET
    records_processed = records_processed + $6,
    records_successful = records_successful + $7,
    records_failed = records_failed + $8,
    pages = pages + $9,
    heartbeat_at = now()
WHERE id = $5;

-- name: finish_sync
-- A sync's end, in one statement on the sync's own connection: its log row; for a success the
-- cursor's last_success_at, its restart-by-date point (the high-water mark, never past the start of
-- the pass) and, after a pass from the beginning ($5: when it started), full_completed_at; and the
-- credential's status: $6 'ok' clears an error, 'error' records a tenant's rejection ($4 says why;
-- a disabled credential stays disabled).
WITH done AS (
    UPDATE stsync.sync_log SET status = $2, error_category = $3, error_message = $4,
        completed_at = now()
    WHERE id = $1 AND status = 'running'
    RETURNING credential_id, data_type, status, started_at, completed_at, records_processed,
              records_successful, records_failed, pages
), success AS (
    UPDATE stsync.cursors k SET last_success_at = done.completed_at,
        full_completed_at = coalesce($5, k.full_completed_at),
        safe_through = least(k.max_modified_on, done.started_at)
    FROM done
    WHERE done.status = 'completed'
      AND k.credential_id = done.credential_id AND k.data_type = done.data_type
), credential AS (
    UPDATE stsync.credentials c SET
        status = CASE WHEN $6::text = 'ok' THEN 'active'
                      WHEN c.status = 'active' THEN 'error' ELSE c.status END,
        last_error = CASE WHEN $6::text = 'error' THEN $4 ELSE c.last_error END,
        last_error_at = CASE WHEN $6::text = 'error' THEN now() ELSE c.last_error_at END,
        updated_at = now()
    FROM done
    WHERE c.id = done.credential_id
      AND (($6::text = 'ok' AND c.status = 'error') OR $6::text = 'error')
)
SELECT completed_at, records_processed, records_successful, records_failed, pages FROM done;

-- name: running_syncs
-- Syncs the log says are running, with what their advisory lock is named after.
SELECT s.id, c.environment, c.tenant_id, s.data_type
FROM stsync.sync_log s JOIN stsync.credentials c ON c.id = s.credential_id
WHERE s.status = 'running';

-- name: sync_still_running
-- Whether a sync is still running (checked again once its lock is held).
SELECT status = 'running' FROM stsync.sync_log WHERE id = $1;

-- name: interrupt_sync
-- A running sync whose process died: interrupted, resumable from its cursor.
UPDATE stsync.sync_log SET status = 'interrupted', completed_at = now(),
    error_category = 'unexpected',
    error_message = 'the daemon running this sync stopped; the next sync resumes from its last committed page'
WHERE id = $1 AND status = 'running';

-- name: try_lock
-- Take a sync's advisory lock ($1: its name, see lock_name) if it is free.
SELECT pg_try_advisory_lock(hashtextextended($1, 7321));

-- name: unlock
-- Release a sync's advisory lock.
SELECT pg_advisory_unlock(hashtextextended($1, 7321));

-- name: insert_dead_letters
-- Records that cannot be stored: their JSON text as received ($8), and as jsonb ($9) when PostgreSQL
-- accepts it (NULL otherwise), for querying.
INSERT INTO stsync.dead_letters (sync_id, credential_id, environment, tenant_id, data_type,
                                 record_id, reason, raw, payload)
SELECT $1, $2, $3, $4, $5, r.record_id, r.reason, r.raw, r.payload
FROM unnest($6::text[], $7::text[], $8::bytea[], $9::jsonb[])
     AS r (record_id, reason, raw, payload);

-- name: resolve_dead_letters
-- Open dead letters of records a batch has just stored: fixed upstream since.
UPDATE stsync.dead_letters SET resolved_at = now()
WHERE credential_id = $1 AND data_type = $2 AND resolved_at IS NULL
  AND record_id = ANY($3::text[]);

-- name: select_dead_letters
-- Dead letters matching the filters, newest first, at most $6, each with how many match in all.
-- Rows from before migration 0005 have no `raw`: their payload's JSON text stands in.
SELECT d.id, d.sync_id, d.credential_id, c.company_id, co.name AS company_name, d.environment,
       d.tenant_id, d.data_type, d.record_id, d.reason,
       coalesce(d.raw, convert_to(d.payload::text, 'UTF8')) AS raw,
       d.created_at, d.resolved_at, count(*) OVER () AS total
FROM stsync.dead_letters d
LEFT JOIN stsync.credentials c ON c.id = d.credential_id
LEFT JOIN stsync.companies co ON co.id = c.company_id
WHERE ($1::uuid IS NULL OR d.credential_id = $1)
  AND ($2::text IS NULL OR c.company_id = $2)
  AND ($3::text IS NULL OR d.environment = $3)
  AND ($4::text IS NULL OR d.data_type = $4)
  AND ($5::boolean OR d.resolved_at IS NULL)
ORDER BY d.created_at DESC, d.id DESC
LIMIT $6;

-- name: count_open_dead_letters
-- Unresolved dead letters of one company, or of all when $1 is NULL (the status summary's count).
SELECT count(*)
FROM stsync.dead_letters d
LEFT JOIN stsync.credentials c ON c.id = d.credential_id
WHERE d.resolved_at IS NULL AND ($1::text IS NULL OR c.company_id = $1);

-- name: open_dead_letters_by_kind
-- Unresolved dead letters per (environment, data type), for the stsync_dead_letters gauge.
SELECT environment, data_type, count(*) AS n
FROM stsync.dead_letters WHERE resolved_at IS NULL
GROUP BY environment, data_type;

-- name: select_syncs
-- Syncs matching the status filters, newest first, at most $8. Failed means every status a retry
-- picks up (failed, timed_out, interrupted: the partial index sync_log_failed_idx).
SELECT s.* FROM stsync.sync_view s
WHERE ($1::text IS NULL OR s.company_id = $1)
  AND (NOT $2 OR s.status = 'running')
  AND (NOT $3 OR s.status IN ('failed', 'timed_out', 'interrupted'))
  AND ($4::timestamptz IS NULL OR s.started_at >= $4)
  AND ($5::uuid IS NULL OR s.run_id = $5)
  AND ($6::text IS NULL OR s.environment = $6)
  AND ($7::text IS NULL OR s.data_type = $7)
ORDER BY s.started_at DESC
LIMIT $8;

-- name: summarize_syncs
-- Counts, records and mean duration per status over the syncs matching the status filters ($1..$7
-- as select_syncs). A join, not `IN (subquery)`: a company's syncs come through the pair index.
SELECT s.status, count(*) AS n, sum(s.records_processed) AS records,
       sum(s.records_failed) AS failed_records,
       avg(extract(epoch FROM s.completed_at - s.started_at)) AS mean_seconds
FROM stsync.sync_log s
JOIN stsync.credentials c ON c.id = s.credential_id
WHERE ($1::text IS NULL OR c.company_id = $1)
  AND (NOT $2 OR s.status = 'running')
  AND (NOT $3 OR s.status IN ('failed', 'timed_out', 'interrupted'))
  AND ($4::timestamptz IS NULL OR s.started_at >= $4)
  AND ($5::uuid IS NULL OR s.run_id = $5)
  AND ($6::text IS NULL OR c.environment = $6)
  AND ($7::text IS NULL OR s.data_type = $7)
GROUP BY s.status;

-- name: finished_syncs_of_run
-- A run's finished syncs, as the sync view shows them.
SELECT s.* FROM stsync.sync_view s
WHERE s.run_id = $1 AND s.status <> 'running'
ORDER BY s.completed_at;

-- name: sync_running_where
-- Where a running sync runs, and in which run.
SELECT instance, run_id FROM stsync.sync_log WHERE id = $1 AND status = 'running';

-- name: select_cursors
-- The cursors of the given credentials, for a run's plan.
SELECT credential_id, data_type, continue_from IS NOT NULL AS has_token, max_modified_on,
       full_completed_at, last_success_at
FROM stsync.cursors WHERE credential_id = ANY($1::uuid[]);

-- name: retry_candidates
-- The latest sync of each (credential, data type) started within the window; the caller keeps
-- those that failed, so a later success (or a running sync) rules a pair out.
SELECT DISTINCT ON (s.credential_id, s.data_type)
       s.id, s.credential_id, s.data_type, s.status, s.error_category, s.attempt, s.started_at
FROM stsync.sync_log s
WHERE s.started_at >= $1
ORDER BY s.credential_id, s.data_type, s.started_at DESC;

-- name: report_rows
-- Per credential and data type: syncs, outcomes and records since $1.
SELECT c.id AS credential_id, c.company_id, co.name AS company_name, c.environment, d.data_type,
       count(s.id) AS syncs,
       count(s.id) FILTER (WHERE s.status = 'completed') AS completed,
       count(s.id) FILTER (WHERE s.status IN ('failed', 'timed_out', 'interrupted')) AS failed,
       coalesce(sum(s.records_processed), 0)::bigint AS records_processed,
       coalesce(sum(s.records_failed), 0)::bigint AS records_failed,
       (array_agg(s.status ORDER BY s.started_at DESC))[1] AS last_status,
       (array_agg(s.error_message ORDER BY s.started_at DESC)
            FILTER (WHERE s.error_message IS NOT NULL))[1] AS last_error,
       (SELECT k.last_success_at FROM stsync.cursors k
         WHERE k.credential_id = c.id AND k.data_type = d.data_type) AS last_success_at
FROM stsync.credentials c
JOIN stsync.companies co ON co.id = c.company_id
CROSS JOIN (VALUES ('customers'), ('invoices')) AS d (data_type)
LEFT JOIN stsync.sync_log s
       ON s.credential_id = c.id AND s.data_type = d.data_type AND s.started_at >= $1
GROUP BY c.id, c.company_id, co.name, c.environment, d.data_type
ORDER BY co.name, c.environment, d.data_type;

-- name: prune_sync_log
-- Retention: up to $2 finished syncs that started before $1, oldest first (the totals follow by
-- trigger); how many went.
WITH gone AS (
    DELETE FROM stsync.sync_log WHERE id IN (
        SELECT id FROM stsync.sync_log
        WHERE started_at < $1 AND status <> 'running'
        ORDER BY started_at LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: prune_dead_letters
-- Retention: up to $2 dead letters resolved before $1 (a later sync stored the record); open ones
-- stay until they are resolved. How many went.
WITH gone AS (
    DELETE FROM stsync.dead_letters WHERE id IN (
        SELECT id FROM stsync.dead_letters WHERE resolved_at < $1 ORDER BY resolved_at LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: summarize_totals
-- What summarize_syncs says with no time window and no run ($1 company, $2 running only, $3 failed
-- only, $4 environment, $5 data type), from the totals (finished syncs) and the running syncs (few,
-- indexed): fast whatever the size of the sync log.
SELECT t.status, sum(t.syncs)::bigint AS n, sum(t.records)::bigint AS records,
       sum(t.failed_records)::bigint AS failed_records,
       sum(t.seconds) / nullif(sum(t.syncs), 0) AS mean_seconds
FROM stsync.sync_totals t
JOIN stsync.credentials c ON c.id = t.credential_id
WHERE ($1::text IS NULL OR c.company_id = $1)
  AND NOT $2
  AND (NOT $3 OR t.status IN ('failed', 'timed_out', 'interrupted'))
  AND ($4::text IS NULL OR c.environment = $4)
  AND ($5::text IS NULL OR t.data_type = $5)
  AND t.syncs > 0
GROUP BY t.status
UNION ALL
SELECT 'running', count(*), sum(s.records_processed), sum(s.records_failed), NULL
FROM stsync.sync_log s
JOIN stsync.credentials c ON c.id = s.credential_id
WHERE s.status = 'running' AND NOT $3
  AND ($1::text IS NULL OR c.company_id = $1)
  AND ($4::text IS NULL OR c.environment = $4)
  AND ($5::text IS NULL OR s.data_type = $5)
HAVING count(*) > 0;

-- name: begin_backfill
-- A backfill's plan on the pair's cursor ($3: when it began, $4: page size, $5: pages), no page
-- committed yet; a first sync has no cursor row so far.
INSERT INTO stsync.cursors (credential_id, data_type, backfill_started_at, backfill_page_size,
                            backfill_pages)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (credential_id, data_type) DO UPDATE SET
    backfill_started_at = excluded.backfill_started_at,
    backfill_page_size = excluded.backfill_page_size,
    backfill_pages = excluded.backfill_pages, backfill_done = '{}', updated_at = now();

-- name: backfill_pages_done
-- In a batch's transaction: the list pages ($3) it committed.
UPDATE stsync.cursors SET backfill_done = backfill_done || $3::integer[]
WHERE credential_id = $1 AND data_type = $2;

-- name: resolve_sync_id
-- How many sync ids lie between $1 and $2 (an id prefix's range), and one of them.
SELECT count(*) AS n, (array_agg(id))[1] AS id
FROM stsync.sync_log WHERE id BETWEEN $1 AND $2;

-- name: select_sync
-- One sync, as the sync view shows it.
SELECT s.* FROM stsync.sync_view s WHERE s.id = $1;

-- name: end_backfill
-- A backfill given up (its list pages keep failing): the export reads from the beginning instead.
UPDATE stsync.cursors SET backfill_started_at = NULL, backfill_page_size = NULL,
    backfill_pages = NULL, backfill_done = '{}', updated_at = now()
WHERE credential_id = $1 AND data_type = $2;
