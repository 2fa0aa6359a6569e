-- `stsyncctl credentials remove` keeps a credential's history: the credential is marked `removed`
-- (its secrets erased), its sync log, cursors and dead letters stay; `--purge` deletes them all.
-- A removed credential does not hold its tenant: the same tenant can be added again.
ALTER TABLE stsync.credentials DROP CONSTRAINT IF EXISTS credentials_status_check;
ALTER TABLE stsync.credentials ADD CONSTRAINT credentials_status_check
    CHECK (status IN ('active', 'error', 'disabled', 'removed'));
ALTER TABLE stsync.credentials ALTER COLUMN client_secret_encrypted DROP NOT NULL;
ALTER TABLE stsync.credentials DROP CONSTRAINT IF EXISTS credentials_environment_tenant_id_key;
CREATE UNIQUE INDEX IF NOT EXISTS credentials_tenant_uidx ON stsync.credentials (environment, tenant_id)
    WHERE status <> 'removed';
