-- When each (credential, data type) last synced successfully, kept next to its cursor so that dry
-- runs, credential views and metrics never scan the sync log.
ALTER TABLE stsync.cursors ADD COLUMN last_success_at timestamptz;

UPDATE stsync.cursors c SET last_success_at = s.completed_at
FROM (SELECT credential_id, data_type, max(completed_at) AS completed_at
      FROM stsync.sync_log WHERE status = 'completed'
      GROUP BY credential_id, data_type) s
WHERE s.credential_id = c.credential_id AND s.data_type = c.data_type;
