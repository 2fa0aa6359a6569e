-- A backfill in progress (a first or full sync of a large tenant read through the list endpoints,
-- several pages at a time): when it began (the catch-up export starts there, minus the look-back),
-- its page size and number of pages, and the pages committed so far, so that an interrupted one
-- resumes with the pages it has not committed. Cleared once the catch-up export commits a token.
ALTER TABLE stsync.cursors
    ADD COLUMN IF NOT EXISTS backfill_started_at timestamptz,
    ADD COLUMN IF NOT EXISTS backfill_page_size integer,
    ADD COLUMN IF NOT EXISTS backfill_pages integer,
    ADD COLUMN IF NOT EXISTS backfill_done integer[] NOT NULL DEFAULT '{}';
