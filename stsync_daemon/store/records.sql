-- Named queries of the record tables: stage, merge, analyze (store/records.py).
-- Each block starts with `-- name: <name>` and a one-line description; store/sql.py loads them.
-- Parameters are always bound ($n), never formatted in.

-- name: create_stage_customers
-- The session's stage table for customers, emptied at each commit.
CREATE TEMPORARY TABLE IF NOT EXISTS stsync_stage_customers (
    id bigint, name text, type text, active boolean, balance numeric,
    street text, unit text, city text, state text, zip text, country text,
    latitude double precision, longitude double precision,
    created_on timestamptz, modified_on timestamptz, payload jsonb
) ON COMMIT DELETE ROWS;

-- name: clear_stage_customers
-- Empty the customers stage table (between the halves of an isolating write).
DELETE FROM pg_temp.stsync_stage_customers;

-- name: merge_customers
-- The staged customers into the table, never replacing a newer version.
INSERT INTO servicetitan.customers AS t (environment, tenant_id, id, name, type, active, balance,
    street, unit, city, state, zip, country, latitude, longitude, created_on, modified_on, payload)
SELECT $1, $2, s.id, s.name, s.type, s.active, s.balance, s.street, s.unit, s.city, s.state, s.zip,
       s.country, s.latitude, s.longitude, s.created_on, s.modified_on, s.payload
FROM pg_temp.stsync_stage_customers s
ON CONFLICT (environment, tenant_id, id) DO UPDATE SET
    name = excluded.name, type = excluded.type, active = excluded.active,
    balance = excluded.balance, street = excluded.street, unit = excluded.unit,
    city = excluded.city, state = excluded.state, zip = excluded.zip, country = excluded.country,
    latitude = excluded.latitude, longitude = excluded.longitude,
    created_on = excluded.created_on, modified_on = excluded.modified_on,
    payload = excluded.payload, synced_at = now()
-- Never replace a row by an older version (a replay, a restart by date): a tie is decided by content.
WHERE excluded.modified_on > t.modified_on
   OR (excluded.modified_on = t.modified_on
       AND (t.active IS DISTINCT FROM excluded.active
            OR t.payload IS DISTINCT FROM excluded.payload));

-- name: analyze_customers
-- Planner statistics after a first sync copied rows straight into customers.
ANALYZE servicetitan.customers;

-- name: create_stage_invoices
-- The session's stage table for invoices, emptied at each commit.
CREATE TEMPORARY TABLE IF NOT EXISTS stsync_stage_invoices (
    id bigint, customer_id bigint, reference_number text, invoice_date timestamptz,
    due_date timestamptz, sub_total numeric, sales_tax numeric, total numeric, balance numeric,
    job_id bigint, business_unit_id bigint, active boolean, created_on timestamptz,
    modified_on timestamptz, payload jsonb
) ON COMMIT DELETE ROWS;

-- name: clear_stage_invoices
-- Empty the invoices stage table (between the halves of an isolating write).
DELETE FROM pg_temp.stsync_stage_invoices;

-- name: merge_invoices
-- The staged invoices into the table, never replacing a newer version.
INSERT INTO servicetitan.invoices AS t (environment, tenant_id, id, customer_id, reference_number,
    invoice_date, due_date, sub_total, sales_tax, total, balance, job_id, business_unit_id, active,
    created_on, modified_on, payload)
SELECT $1, $2, s.id, s.customer_id, s.reference_number, s.invoice_date, s.due_date, s.sub_total,
       s.sales_tax, s.total, s.balance, s.job_id, s.business_unit_id, s.active, s.created_on,
       s.modified_on, s.payload
FROM pg_temp.stsync_stage_invoices s
ON CONFLICT (environment, tenant_id, id) DO UPDATE SET
    customer_id = excluded.customer_id, reference_number = excluded.reference_number,
    invoice_date = excluded.invoice_date, due_date = excluded.due_date,
    sub_total = excluded.sub_total, sales_tax = excluded.sales_tax, total = excluded.total,
    balance = excluded.balance, job_id = excluded.job_id,
    business_unit_id = excluded.business_unit_id, active = excluded.active,
    created_on = excluded.created_on, modified_on = excluded.modified_on,
    payload = excluded.payload, synced_at = now()
-- Never replace a row by an older version (a replay, a restart by date): a tie is decided by content.
WHERE excluded.modified_on > t.modified_on
   OR (excluded.modified_on = t.modified_on
       AND (t.active IS DISTINCT FROM excluded.active
            OR t.payload IS DISTINCT FROM excluded.payload));

-- name: analyze_invoices
-- Planner statistics after a first sync copied rows straight into invoices.
ANALYZE servicetitan.invoices;
