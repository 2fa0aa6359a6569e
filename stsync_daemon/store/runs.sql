-- Named queries of runs, their items and claims, and instances (store/runs.py).
-- Each block starts with `-- name: <name>` and a one-line description; store/sql.py loads them.
-- Parameters are always bound ($n), never formatted in.

-- name: insert_run
-- A run that is not a batch of syncs (the report action); nothing when it exists.
INSERT INTO stsync.runs (id, action, trigger, schedule_name, scheduled_for, params, instance)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING started_at;

-- name: insert_manual_run
-- A run started by an operator.
INSERT INTO stsync.runs (id, action, trigger, params, instance, max_concurrent, timeout_seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING started_at;

-- name: claim_tick
-- A scheduled tick becomes a run once across all instances, and only while no earlier run of the
-- same schedule is still going. Returns the run's start time, or nothing when not claimed.
WITH lock AS (SELECT pg_advisory_xact_lock(hashtextextended('stsync-schedule:' || $4, 0)))
INSERT INTO stsync.runs (id, action, trigger, schedule_name, scheduled_for, params, instance,
                         max_concurrent, timeout_seconds)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM lock
WHERE NOT EXISTS (SELECT 1 FROM stsync.runs
                  WHERE schedule_name = $4 AND (scheduled_for = $5 OR status = 'running'))
ON CONFLICT DO NOTHING
RETURNING started_at;

-- name: tick_taken
-- Whether a schedule's tick already became a run (here or on another instance).
SELECT EXISTS (SELECT 1 FROM stsync.runs WHERE schedule_name = $1 AND scheduled_for = $2);

-- name: insert_run_items
-- A run's (credential, data type) items, in the order they should run.
INSERT INTO stsync.run_items (run_id, position, credential_id, data_type, mode, trigger, retry_of,
                              attempt)
SELECT $1, i.position, i.credential_id, i.data_type, i.mode, i.trigger, i.retry_of, i.attempt
FROM unnest($2::int[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::uuid[], $8::int[])
     AS i (position, credential_id, data_type, mode, trigger, retry_of, attempt);

-- name: finish_run
-- A run's end: its status and its summary document.
UPDATE stsync.runs SET status = $2, summary = $3, completed_at = now() WHERE id = $1;

-- name: run_header
-- What a run's summary needs of the run itself.
SELECT action, trigger, started_at FROM stsync.runs WHERE id = $1;

-- name: run_status
-- A run's status and owner.
SELECT status, instance FROM stsync.runs WHERE id = $1;

-- name: own_running_runs
-- This instance's running runs.
SELECT id FROM stsync.runs WHERE status = 'running' AND instance = $1;

-- name: runs_with_pending_items
-- Running runs with items left to claim, oldest first.
SELECT r.id, r.max_concurrent, r.timeout_seconds
FROM stsync.runs r
WHERE r.status = 'running'
  AND EXISTS (SELECT 1 FROM stsync.run_items i WHERE i.run_id = r.id AND i.status = 'pending')
ORDER BY r.started_at;

-- name: claim_items
-- Up to $3 pending items of a run, each with its credential as `select_credential` reads it (items
-- go with their credential: ON DELETE CASCADE).
UPDATE stsync.run_items AS t
SET status = 'claimed', claimed_by = $2, claimed_at = now(), sync_id = gen_random_uuid()
FROM (SELECT run_id, credential_id, data_type FROM stsync.run_items
      WHERE run_id = $1 AND status = 'pending'
        AND EXISTS (SELECT 1 FROM stsync.runs r WHERE r.id = $1 AND r.status = 'running')
      ORDER BY position LIMIT $3
      FOR UPDATE SKIP LOCKED) AS c,
     stsync.credentials k JOIN stsync.companies co ON co.id = k.company_id
WHERE t.run_id = c.run_id AND t.credential_id = c.credential_id AND t.data_type = c.data_type
  AND k.id = t.credential_id
RETURNING t.credential_id, t.data_type, t.mode, t.trigger, t.retry_of, t.attempt, t.sync_id,
          k.id, k.company_id, co.name AS company_name, k.environment, k.tenant_id, k.client_id,
          k.status, k.last_error, k.last_error_at, k.schedule_enabled,
          k.app_key_encrypted IS NOT NULL AS has_app_key, k.created_at, k.updated_at;

-- name: unclaim_item
-- A claimed item whose sync could not start (PostgreSQL went away first): pending again.
UPDATE stsync.run_items SET status = 'pending', claimed_by = NULL, claimed_at = NULL, sync_id = NULL
WHERE run_id = $1 AND credential_id = $2 AND data_type = $3 AND status = 'claimed';

-- name: release_stale_claims
-- Items this instance ($1) claimed a while ago ($3 seconds: a claim being started is left alone)
-- that run nowhere here ($2: its syncs in flight) and never got a sync row: their return to pending
-- was lost in an outage.
UPDATE stsync.run_items AS i SET status = 'pending', claimed_by = NULL, claimed_at = NULL,
    sync_id = NULL
WHERE i.status = 'claimed' AND i.claimed_by = $1
  AND i.claimed_at < now() - make_interval(secs => $3)
  AND NOT (i.sync_id = ANY($2::uuid[]))
  AND NOT EXISTS (SELECT 1 FROM stsync.sync_log s WHERE s.id = i.sync_id)
  AND EXISTS (SELECT 1 FROM stsync.runs r WHERE r.id = i.run_id AND r.status = 'running')
RETURNING i.run_id;

-- name: finish_item
-- An item's end and its outcome.
UPDATE stsync.run_items SET status = 'done', finished_at = now(), outcome = $4
WHERE run_id = $1 AND credential_id = $2 AND data_type = $3;

-- name: cancel_pending_items
-- A run's items not yet claimed: cancelled, with why.
UPDATE stsync.run_items SET status = 'cancelled', finished_at = now(), outcome = $2
WHERE run_id = $1 AND status = 'pending';

-- name: run_progress
-- How many of a run's items are still open, and in all.
SELECT count(*) FILTER (WHERE status IN ('pending', 'claimed')) AS open,
       count(*) AS total
FROM stsync.run_items WHERE run_id = $1;

-- name: run_credentials
-- How many credentials a run covers.
SELECT count(DISTINCT credential_id) FROM stsync.run_items WHERE run_id = $1;

-- name: run_item_outcomes
-- Items that ended without a sync of their own (skipped or cancelled), for the run's summary.
SELECT i.credential_id, i.data_type, i.outcome, c.company_id, co.name AS company_name, c.environment
FROM stsync.run_items i
JOIN stsync.credentials c ON c.id = i.credential_id
JOIN stsync.companies co ON co.id = c.company_id
WHERE i.run_id = $1 AND i.outcome IS NOT NULL
ORDER BY i.position;

-- name: settle_orphaned_items
-- Claimed items whose sync ended (e.g. swept as interrupted) or whose claimer is gone.
UPDATE stsync.run_items AS i
SET status = 'done', finished_at = now(),
    outcome = CASE WHEN s.id IS NULL THEN 'interrupted: the instance that claimed it stopped'
                   ELSE i.outcome END
FROM stsync.run_items AS i2
LEFT JOIN stsync.sync_log s ON s.id = i2.sync_id
LEFT JOIN stsync.instances n ON n.name = i2.claimed_by
WHERE i.run_id = i2.run_id AND i.credential_id = i2.credential_id AND i.data_type = i2.data_type
  AND i2.status = 'claimed'
  AND ((s.id IS NOT NULL AND s.status <> 'running')
       OR (s.id IS NULL AND (n.name IS NULL OR n.stopped_at IS NOT NULL
                             OR n.heartbeat_at < now() - make_interval(secs => $1))))
RETURNING i.run_id;

-- name: orphaned_runs
-- Running runs whose owner is gone and that have nothing left to do.
SELECT r.id FROM stsync.runs r
LEFT JOIN stsync.instances n ON n.name = r.instance
WHERE r.status = 'running'
  AND (n.name IS NULL OR n.stopped_at IS NOT NULL
       OR n.heartbeat_at < now() - make_interval(secs => $1))
  AND NOT EXISTS (SELECT 1 FROM stsync.run_items i
                  WHERE i.run_id = r.id AND i.status IN ('pending', 'claimed'));

-- name: select_runs
-- The newest $1 runs with their syncs' counts.
SELECT r.id, r.action, r.trigger, r.schedule_name, r.scheduled_for, r.status, r.instance,
       r.started_at, r.completed_at,
       count(s.id) AS total_syncs,
       count(s.id) FILTER (WHERE s.status = 'running') AS running_syncs,
       count(s.id) FILTER (WHERE s.status = 'completed') AS successful_syncs,
       count(s.id) FILTER (WHERE s.status IN ('failed', 'timed_out', 'interrupted', 'cancelled'))
           AS failed_syncs,
       coalesce(sum(s.records_processed), 0)::bigint AS records_processed
FROM (SELECT * FROM stsync.runs ORDER BY started_at DESC LIMIT $1) r
LEFT JOIN stsync.sync_log s ON s.run_id = r.id
GROUP BY r.id, r.action, r.trigger, r.schedule_name, r.scheduled_for, r.status, r.instance,
         r.started_at, r.completed_at
ORDER BY r.started_at DESC;

-- name: last_schedule_runs
-- Each schedule's latest run.
SELECT DISTINCT ON (schedule_name) schedule_name, id, scheduled_for, started_at
FROM stsync.runs WHERE schedule_name IS NOT NULL
ORDER BY schedule_name, started_at DESC;

-- name: heartbeat
-- This instance is alive (registered on first beat).
INSERT INTO stsync.instances (name, host, pid, version) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL,
    host = excluded.host, pid = excluded.pid, version = excluded.version;

-- name: instance_stopped
-- This instance stopped cleanly: its runs need no lease to expire.
UPDATE stsync.instances SET stopped_at = now(), heartbeat_at = now() WHERE name = $1;

-- name: select_instance
-- One instance's registration.
SELECT host, pid, heartbeat_at, stopped_at FROM stsync.instances WHERE name = $1;

-- name: select_instances
-- Instances seen in the last day, whether alive, and their running syncs.
SELECT name, host, pid, version, started_at, heartbeat_at, stopped_at,
       (stopped_at IS NULL AND heartbeat_at >= now() - make_interval(secs => $1)) AS alive,
       (SELECT count(*) FROM stsync.sync_log s
         WHERE s.instance = i.name AND s.status = 'running') AS running_syncs
FROM stsync.instances i
WHERE stopped_at IS NULL OR stopped_at > now() - interval '1 day'
ORDER BY name;

-- name: notify
-- Tell every instance's listener ($1: the channel) that something changed ($2).
SELECT pg_notify($1, $2);

-- name: pause_schedule
-- A schedule's ticks are skipped from now on, by every instance; pausing twice keeps the first time.
INSERT INTO stsync.schedule_pauses (name, paused_by) VALUES ($1, $2)
ON CONFLICT (name) DO NOTHING;

-- name: resume_schedule
-- A paused schedule fires again at its next tick; true when it was paused.
DELETE FROM stsync.schedule_pauses WHERE name = $1 RETURNING name;

-- name: paused_schedules
-- Every paused schedule and when it was paused.
SELECT name, paused_at, paused_by FROM stsync.schedule_pauses;

-- name: schedule_paused
-- Whether one schedule is paused (checked at each of its ticks).
SELECT EXISTS (SELECT 1 FROM stsync.schedule_pauses WHERE name = $1);

-- name: prune_runs
-- Retention: up to $2 finished runs that started before $1 (their items go with them; their syncs
-- stay in the sync log, no longer tied to a run). How many went.
WITH gone AS (
    DELETE FROM stsync.runs WHERE id IN (
        SELECT id FROM stsync.runs WHERE status <> 'running' AND started_at < $1
        ORDER BY started_at LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: resolve_run_id
-- How many run ids lie between $1 and $2 (an id prefix's range), and one of them.
SELECT count(*) AS n, (array_agg(id))[1] AS id
FROM stsync.runs WHERE id BETWEEN $1 AND $2;

-- name: resolve_run_or_sync_id
-- How many run and sync ids lie between $1 and $2 (an id prefix's range), and one of them: what
-- `cancel` may be given.
SELECT count(*) AS n, (array_agg(id))[1] AS id
FROM (SELECT id FROM stsync.runs WHERE id BETWEEN $1 AND $2
      UNION ALL
      SELECT id FROM stsync.sync_log WHERE id BETWEEN $1 AND $2) AS found;
