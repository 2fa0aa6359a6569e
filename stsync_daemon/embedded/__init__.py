"""Embedded parts for the demo and the tests: a private PostgreSQL cluster."""
