-- Schedules an operator paused (`stsyncctl schedules pause NAME`): kept in the database so that
-- every instance of a cluster skips their ticks, and a restart does not resume them by surprise.
CREATE TABLE IF NOT EXISTS stsync.schedule_pauses (
    name        text PRIMARY KEY,
    paused_at   timestamptz NOT NULL DEFAULT now(),
    paused_by   text
);
