"""The sync engine: export pages from ServiceTitan into PostgreSQL, one committed batch at a time."""
