-- A sync as every reader shows it: its log row with its credential's tenant and company. Written
-- once here so that status, run summaries and reports cannot drift apart.
CREATE OR REPLACE VIEW stsync.sync_view AS
SELECT s.id, s.run_id, s.credential_id, s.data_type, s.trigger, s.mode, s.status, s.started_at,
       s.completed_at, s.records_processed, s.records_successful, s.records_failed, s.pages,
       s.error_category, s.error_message, s.retry_of, s.attempt, s.instance,
       c.company_id, co.name AS company_name, c.environment, c.tenant_id
FROM stsync.sync_log s
JOIN stsync.credentials c ON c.id = s.credential_id
JOIN stsync.companies co ON co.id = c.company_id;
