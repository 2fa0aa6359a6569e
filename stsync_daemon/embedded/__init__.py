"""Embedded parts for the demo, tests and benchmarks: a private PostgreSQL, stsyncd as a child."""
