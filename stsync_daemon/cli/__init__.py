"""Command lines: `stsyncd` (the daemon and its admin commands) and `stsyncctl` (the operator's)."""
