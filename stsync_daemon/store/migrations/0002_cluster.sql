-- Several daemons on one database: instances with heartbeats, and a run's syncs as claimable items.
CREATE TABLE stsync.instances (
    name          text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    version       text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);

ALTER TABLE stsync.runs
    ADD COLUMN max_concurrent  integer NOT NULL DEFAULT 3,
    ADD COLUMN timeout_seconds double precision NOT NULL DEFAULT 3600;

-- One row per (credential, data type) of a run; any instance with capacity claims pending ones.
CREATE TABLE stsync.run_items (
    run_id           uuid NOT NULL REFERENCES stsync.runs (id) ON DELETE CASCADE,
    position         integer NOT NULL,
    credential_id    uuid NOT NULL REFERENCES stsync.credentials (id) ON DELETE CASCADE,
    data_type        text NOT NULL CHECK (data_type IN ('customers', 'invoices')),
    mode             text NOT NULL CHECK (mode IN ('incremental', 'full')),
    trigger          text NOT NULL CHECK (trigger IN ('scheduled', 'manual', 'retry')),
    retry_of         uuid,
    attempt          integer NOT NULL DEFAULT 1,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'claimed', 'done', 'cancelled')),
    sync_id          uuid,
    claimed_by       text,
    claimed_at       timestamptz,
    finished_at      timestamptz,
    outcome          text,
    PRIMARY KEY (run_id, credential_id, data_type)
);
CREATE INDEX run_items_open_idx ON stsync.run_items (run_id, position)
    WHERE status IN ('pending', 'claimed');
CREATE INDEX runs_running_idx ON stsync.runs (started_at) WHERE status = 'running';
