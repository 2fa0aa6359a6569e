"""The daemon process: life cycle, scheduler, runs, control server and systemd integration."""
