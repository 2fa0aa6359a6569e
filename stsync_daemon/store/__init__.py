"""The PostgreSQL store: migrations, credentials, runs, the sync log, cursors and records."""
