-- Named queries of credentials and companies (store/credentials.py).
-- Each block starts with `-- name: <name>` and a one-line description; store/sql.py loads them.
-- Parameters are always bound ($n), never formatted in.

-- name: upsert_company
-- A company by its id, its name kept current.
INSERT INTO stsync.companies (id, name) VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_at = now()
WHERE stsync.companies.name IS DISTINCT FROM excluded.name;

-- name: insert_credential
-- A new credential, its secrets encrypted by the caller.
INSERT INTO stsync.credentials (id, company_id, environment, tenant_id, client_id,
                                client_secret_encrypted, app_key_encrypted, schedule_enabled)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: select_credentials
-- Credentials matching the filters (environment, company, id, status), without secrets; removed
-- ones only when asked for by status.
SELECT c.id, c.company_id, co.name AS company_name, c.environment, c.tenant_id, c.client_id,
       c.status, c.last_error, c.last_error_at, c.schedule_enabled,
       c.app_key_encrypted IS NOT NULL AS has_app_key, c.created_at, c.updated_at
FROM stsync.credentials c JOIN stsync.companies co ON co.id = c.company_id
WHERE ($1::text IS NULL OR c.environment = $1)
  AND ($2::text IS NULL OR c.company_id = $2)
  AND ($3::uuid IS NULL OR c.id = $3)
  AND (c.status = $4 OR ($4::text IS NULL AND c.status <> 'removed'))
ORDER BY co.name, c.company_id, c.environment, c.tenant_id;

-- name: select_credential
-- One credential without its secrets.
SELECT c.id, c.company_id, co.name AS company_name, c.environment, c.tenant_id, c.client_id,
       c.status, c.last_error, c.last_error_at, c.schedule_enabled,
       c.app_key_encrypted IS NOT NULL AS has_app_key, c.created_at, c.updated_at
FROM stsync.credentials c JOIN stsync.companies co ON co.id = c.company_id
WHERE c.id = $1;

-- name: credential_company
-- The company a credential belongs to.
SELECT company_id FROM stsync.credentials WHERE id = $1;

-- name: select_credential_secrets
-- One credential's encrypted client secret and app key.
SELECT client_secret_encrypted, app_key_encrypted FROM stsync.credentials WHERE id = $1;

-- name: update_credential
-- Only the given fields of a credential change ($2..$6 NULL leave them as they are).
UPDATE stsync.credentials SET
    client_id = coalesce($2, client_id),
    client_secret_encrypted = coalesce($3, client_secret_encrypted),
    app_key_encrypted = CASE WHEN $5 THEN NULL ELSE coalesce($4, app_key_encrypted) END,
    schedule_enabled = coalesce($6, schedule_enabled),
    -- New credentials deserve a new chance: a fixed secret clears the error state.
    status = CASE WHEN ($2 IS NOT NULL OR $3 IS NOT NULL) AND status = 'error' THEN 'active'
                  ELSE status END,
    updated_at = now()
WHERE id = $1 AND status <> 'removed'
RETURNING id;

-- name: set_credential_status
-- A credential's status, and its last error when $3 is given.
UPDATE stsync.credentials SET status = $2, last_error = $3,
    last_error_at = CASE WHEN $3::text IS NULL THEN last_error_at ELSE now() END,
    updated_at = now()
WHERE id = $1 AND status <> 'removed'
RETURNING id;

-- name: remove_credential
-- A credential out of service for good, its history kept: secrets erased, never scheduled again.
UPDATE stsync.credentials SET status = 'removed', client_secret_encrypted = NULL,
    app_key_encrypted = NULL, schedule_enabled = false, updated_at = now()
WHERE id = $1 AND status <> 'removed'
RETURNING id;

-- name: delete_credential
-- A credential and its history: by cascade its sync log, totals, cursors and run items; and its
-- dead letters.
WITH letters AS (DELETE FROM stsync.dead_letters WHERE credential_id = $1)
DELETE FROM stsync.credentials WHERE id = $1 RETURNING id;

-- name: count_credentials_by_status
-- How many credentials are in each status (the stsync_credentials gauge).
SELECT status, count(*) AS n FROM stsync.credentials GROUP BY status;

-- name: last_success
-- When each (credential, data type) of the given credentials last synced successfully.
SELECT credential_id, data_type, last_success_at AS completed_at
FROM stsync.cursors
WHERE credential_id = ANY($1::uuid[]) AND last_success_at IS NOT NULL;

-- name: scheduled_credentials_by_status
-- Credentials some enabled schedule syncs (not disabled, scheduled syncs on, matched by a schedule's
-- filters: $1 environments, $2 companies, $3 credential ids, $4 data types, NULL matching any), by
-- environment and status: what the credentials-in-error alert counts.
WITH coverage AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        AS s(environment, company_id, credential_id, data_type)
)
SELECT c.environment, c.status, count(*) AS n
FROM stsync.credentials c
WHERE c.status NOT IN ('disabled', 'removed') AND c.schedule_enabled
  AND EXISTS (SELECT 1 FROM coverage s
              WHERE (s.environment IS NULL OR s.environment = c.environment)
                AND (s.company_id IS NULL OR s.company_id = c.company_id)
                AND (s.credential_id IS NULL OR s.credential_id = c.id::text))
GROUP BY c.environment, c.status;

-- name: freshness_of_scheduled
-- Per environment and data type, the (credential, data type) pairs schedules cover ($1..$4 as in
-- scheduled_credentials_by_status), how many had no success for $5 seconds, and the oldest last
-- success; a pair that never succeeded counts from when its credential was added.
WITH coverage AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        AS s(environment, company_id, credential_id, data_type)
), pairs AS (
    SELECT c.environment, d.data_type, coalesce(k.last_success_at, c.created_at) AS fresh_at
    FROM stsync.credentials c
    CROSS JOIN (SELECT DISTINCT data_type FROM coverage) d
    LEFT JOIN stsync.cursors k ON k.credential_id = c.id AND k.data_type = d.data_type
    WHERE c.status NOT IN ('disabled', 'removed') AND c.schedule_enabled
      AND EXISTS (SELECT 1 FROM coverage s
                  WHERE (s.environment IS NULL OR s.environment = c.environment)
                    AND (s.company_id IS NULL OR s.company_id = c.company_id)
                    AND (s.credential_id IS NULL OR s.credential_id = c.id::text)
                    AND s.data_type = d.data_type)
)
SELECT environment, data_type, count(*) AS scheduled,
       count(*) FILTER (WHERE fresh_at < now() - make_interval(secs => $5)) AS stale,
       min(fresh_at) AS oldest
FROM pairs
GROUP BY environment, data_type;

-- name: scheduled_last_success
-- When each scheduled (credential, data type) last synced successfully ($1..$4 as in
-- scheduled_credentials_by_status): the opt-in per-credential series.
WITH coverage AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        AS s(environment, company_id, credential_id, data_type)
)
SELECT k.credential_id, k.data_type, k.last_success_at AS completed_at, c.company_id, c.environment
FROM stsync.credentials c JOIN stsync.cursors k ON k.credential_id = c.id
WHERE k.last_success_at IS NOT NULL AND c.status NOT IN ('disabled', 'removed') AND c.schedule_enabled
  AND EXISTS (SELECT 1 FROM coverage s
              WHERE (s.environment IS NULL OR s.environment = c.environment)
                AND (s.company_id IS NULL OR s.company_id = c.company_id)
                AND (s.credential_id IS NULL OR s.credential_id = c.id::text)
                AND s.data_type = k.data_type);

-- name: resolve_credential_id
-- How many credential ids lie between $1 and $2 (an id prefix's range), and one of them.
SELECT count(*) AS n, (array_agg(id))[1] AS id
FROM stsync.credentials WHERE id BETWEEN $1 AND $2;
