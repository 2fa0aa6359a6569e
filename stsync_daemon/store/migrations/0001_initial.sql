-- stsync's own tables live in schema stsync; synchronized records in schema servicetitan.
CREATE SCHEMA IF NOT EXISTS stsync;
CREATE SCHEMA IF NOT EXISTS servicetitan;

CREATE TABLE stsync.companies (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stsync.credentials (
    id                       uuid PRIMARY KEY,
    company_id               text NOT NULL REFERENCES stsync.companies (id),
    environment              text NOT NULL CHECK (environment IN ('integration', 'production')),
    tenant_id                bigint NOT NULL CHECK (tenant_id > 0),
    client_id                text NOT NULL,
    client_secret_encrypted  bytea NOT NULL,
    app_key_encrypted        bytea,
    status                   text NOT NULL DEFAULT 'active'
                             CHECK (status IN ('active', 'error', 'disabled')),
    last_error               text,
    last_error_at            timestamptz,
    schedule_enabled         boolean NOT NULL DEFAULT true,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (environment, tenant_id)
);
CREATE INDEX credentials_company_idx ON stsync.credentials (company_id);

-- One row per batch: a scheduled tick, a manual process or a retry.
CREATE TABLE stsync.runs (
    id             uuid PRIMARY KEY,
    action         text NOT NULL CHECK (action IN ('process', 'retry', 'report')),
    trigger        text NOT NULL CHECK (trigger IN ('scheduled', 'manual', 'retry')),
    schedule_name  text,
    scheduled_for  timestamptz,
    status         text NOT NULL DEFAULT 'running'
                   CHECK (status IN ('running', 'completed', 'failed', 'interrupted', 'cancelled')),
    params         jsonb NOT NULL DEFAULT '{}',
    summary        jsonb,
    instance       text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz
);
-- A scheduled tick is claimed once, whichever instance sees it first.
CREATE UNIQUE INDEX runs_tick_uidx ON stsync.runs (schedule_name, scheduled_for)
    WHERE schedule_name IS NOT NULL AND scheduled_for IS NOT NULL;
CREATE INDEX runs_started_idx ON stsync.runs (started_at DESC);

-- One row per sync of one credential and one data type.
CREATE TABLE stsync.sync_log (
    id                  uuid PRIMARY KEY,
    run_id              uuid REFERENCES stsync.runs (id) ON DELETE SET NULL,
    credential_id       uuid NOT NULL REFERENCES stsync.credentials (id) ON DELETE CASCADE,
    data_type           text NOT NULL CHECK (data_type IN ('customers', 'invoices')),
    trigger             text NOT NULL CHECK (trigger IN ('scheduled', 'manual', 'retry')),
    mode                text NOT NULL CHECK (mode IN ('incremental', 'full')),
    status              text NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'completed', 'failed', 'timed_out',
                                          'interrupted', 'cancelled')),
    started_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz,
    records_processed   bigint NOT NULL DEFAULT 0,
    records_successful  bigint NOT NULL DEFAULT 0,
    records_failed      bigint NOT NULL DEFAULT 0,
    pages               integer NOT NULL DEFAULT 0,
    error_category      text CHECK (error_category IN ('auth', 'api', 'rate_limit', 'timeout',
                                                       'network', 'database', 'validation',
                                                       'unexpected')),
    error_message       text,
    retry_of            uuid REFERENCES stsync.sync_log (id) ON DELETE SET NULL,
    attempt             integer NOT NULL DEFAULT 1,
    started_from        text,
    instance            text,
    heartbeat_at        timestamptz
);
CREATE INDEX sync_log_started_idx ON stsync.sync_log (started_at DESC);
CREATE INDEX sync_log_pair_idx ON stsync.sync_log (credential_id, data_type, started_at DESC);
CREATE INDEX sync_log_run_idx ON stsync.sync_log (run_id);
CREATE INDEX sync_log_running_idx ON stsync.sync_log (status) WHERE status = 'running';
CREATE INDEX sync_log_failed_idx ON stsync.sync_log (started_at DESC)
    WHERE status IN ('failed', 'timed_out', 'interrupted');

-- Where the next sync of a (credential, data type) resumes; written with the page it describes.
CREATE TABLE stsync.cursors (
    credential_id     uuid NOT NULL REFERENCES stsync.credentials (id) ON DELETE CASCADE,
    data_type         text NOT NULL CHECK (data_type IN ('customers', 'invoices')),
    continue_from     text,
    max_modified_on   timestamptz,
    full_completed_at timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (credential_id, data_type)
);

-- Records that failed validation: kept with the raw payload and the reason, never blocking a sync.
CREATE TABLE stsync.dead_letters (
    id             bigserial PRIMARY KEY,
    sync_id        uuid REFERENCES stsync.sync_log (id) ON DELETE SET NULL,
    credential_id  uuid,
    environment    text NOT NULL,
    tenant_id      bigint NOT NULL,
    data_type      text NOT NULL,
    record_id      text,
    reason         text NOT NULL,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_created_idx ON stsync.dead_letters (created_at DESC);

CREATE TABLE servicetitan.customers (
    environment   text NOT NULL,
    tenant_id     bigint NOT NULL,
    id            bigint NOT NULL,
    name          text,
    type          text,
    active        boolean NOT NULL,
    balance       numeric,
    street        text,
    unit          text,
    city          text,
    state         text,
    zip           text,
    country       text,
    latitude      double precision,
    longitude     double precision,
    created_on    timestamptz,
    modified_on   timestamptz NOT NULL,
    payload       jsonb NOT NULL,
    synced_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment, tenant_id, id)
);

CREATE TABLE servicetitan.invoices (
    environment       text NOT NULL,
    tenant_id         bigint NOT NULL,
    id                bigint NOT NULL,
    customer_id       bigint,
    reference_number  text,
    invoice_date      timestamptz,
    due_date          timestamptz,
    sub_total         numeric,
    sales_tax         numeric,
    total             numeric,
    balance           numeric,
    job_id            bigint,
    business_unit_id  bigint,
    active            boolean NOT NULL,
    created_on        timestamptz,
    modified_on       timestamptz NOT NULL,
    payload           jsonb NOT NULL,
    synced_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment, tenant_id, id)
);
CREATE INDEX invoices_customer_idx ON servicetitan.invoices (environment, tenant_id, customer_id);
