"""The sync engine: ServiceTitan export pages into PostgreSQL, one committed batch at a time."""
