"""stsync: keeps ServiceTitan customers and invoices synchronized into PostgreSQL."""

__version__ = "0.1.0"
