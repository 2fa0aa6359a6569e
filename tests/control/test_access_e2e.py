"""End to end: the real `stsyncd` running as its own OS user, and `stsyncctl` run by real OS users
(`setpriv`), as the shipped unit and the README's `usermod -aG stsync alice` have it.

Where the kernel allows it (CAP_SYS_ADMIN), the daemon runs in its own mount namespace with /proc
mounted `hidepid=invisible`, which is what the unit's `ProtectProc=invisible` does: it cannot see
its clients' processes, so their groups must come from the socket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from stsync_daemon.embedded.daemon import DaemonProcess
from stsync_daemon.enums import Environment
from stsync_daemon.errors import StsyncError
from stsync_daemon.sandbox import Sandbox, SandboxConfig
from tests.cli.conftest import Result, run_cli
from tests.support import daemon_settings, tenant, write_key

from .conftest import OsUser, OsUsers

pytestmark = pytest.mark.slow
TENANTS = (tenant(401, customers=20, invoices=10), tenant(402, Environment.INTEGRATION))
HIDE_PROC = ("sh", "-c", 'mount -t proc -o hidepid=invisible proc /proc && exec "$@"', "sh")
PRIVATE_MOUNTS = ("unshare", "--mount", "--propagation", "private")


def _can_hide_proc() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*PRIVATE_MOUNTS, *HIDE_PROC, "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def hidden_proc() -> tuple[str, ...] | None:
    """The prefix that runs a program with /proc as ProtectProc=invisible leaves it, if we can."""
    return (*PRIVATE_MOUNTS, *HIDE_PROC) if _can_hide_proc() else None


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(tenants=TENANTS, export_page_size=50, seed=9)) as sb:
        yield sb


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stacc-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def start_as_service(
    users: OsUsers,
    sandbox: Sandbox,
    dsn: str,
    workdir: Path,
    *,
    hide_proc: tuple[str, ...] | None,
    run_mode: int,
    **control: Any,
) -> DaemonProcess:
    """`stsyncd run` as the `svc` user, its files laid out as the unit lays them out."""
    svc = users.svc
    run = workdir / "run"
    run.mkdir()
    os.chown(run, svc.uid, svc.gid)
    os.chmod(run, run_mode)  # RuntimeDirectoryMode=
    key = write_key(workdir)
    os.chown(key, svc.uid, svc.gid)
    os.chmod(key, 0o400)
    settings = daemon_settings(sandbox, dsn, key, control=control)
    daemon = DaemonProcess(
        workdir, settings, command_prefix=(*(hide_proc or ()), *users.prefix(svc))
    )
    return await daemon.start()


class As:
    """stsyncctl run by one OS user against one daemon."""

    def __init__(self, users: OsUsers, user: OsUser | None, daemon: DaemonProcess) -> None:
        self.prefix = users.prefix(user) if user is not None else ()
        self.socket = daemon.socket

    async def __call__(self, *argv: str, stdin: str | None = None) -> Result:
        result = await run_cli("--socket", str(self.socket), *argv, stdin=stdin, prefix=self.prefix)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    async def add(self, spec: Any, company_id: str) -> Result:
        return await self(
            "--json-output",
            "credentials",
            "add",
            "--company-id",
            company_id,
            "--company-name",
            f"Company {company_id}",
            "-e",
            spec.environment.value,
            "--tenant-id",
            str(spec.tenant_id),
            "--client-id",
            spec.client_id,
            stdin=spec.client_secret + "\n",
        )


def refused_line(result: Result) -> str:
    assert (result.code, result.stdout) == (3, ""), result
    [line] = result.stderr.splitlines()
    assert "refused this user" in line, line
    return line


def credential_id(result: Result) -> str:
    assert result.code == 0, result.stderr
    return str(json.loads(result.stdout)["id"])


def assert_proc_hidden(daemon: DaemonProcess) -> None:
    """The daemon really runs with /proc as ProtectProc=invisible leaves it."""
    mounts = Path(f"/proc/{daemon.pid}/mountinfo").read_text()
    assert "hidepid=invisible" in mounts or "hidepid=2" in mounts


async def test_default_group_reads_and_operates_root_and_service_user_change_credentials(
    os_users: OsUsers,
    sandbox: Sandbox,
    database_dsn: str,
    workdir: Path,
    hidden_proc: tuple[str, ...] | None,
) -> None:
    """The README's story: `usermod -aG stsync alice` with the shipped config (no allowed_group)."""
    daemon = await start_as_service(
        os_users, sandbox, database_dsn, workdir, hide_proc=hidden_proc, run_mode=0o750
    )
    try:
        if hidden_proc is not None:
            assert_proc_hidden(daemon)
        info = daemon.socket.stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (
            os_users.svc.uid,
            os_users.svc.gid,
            0o660,
        )
        member = As(os_users, os_users.member, daemon)
        assert (await member("status")).code == 0
        assert (await member("--json-output", "credentials", "list")).code == 0
        assert (await member("schedules")).code == 0
        line = refused_line(await member.add(TENANTS[0], "m1"))
        assert "credentials add changes the configuration" in line
        assert f"user {os_users.svc.name} may do" in line and "usermod" not in line

        # The service user and root may change credentials; the member may run syncs and test.
        service = As(os_users, os_users.svc, daemon)
        added = credential_id(await service.add(TENANTS[0], "s1"))
        assert (await service("credentials", "disable", added)).code == 0
        root = As(os_users, None, daemon)
        assert (await root("credentials", "enable", added)).code == 0
        assert (await member("credentials", "test", added)).code == 0
        assert (await member("process", "--credential-id", added)).code == 0
        assert (await member("retry")).code == 0
        refused_line(await member("credentials", "remove", added))
        assert (await root("credentials", "remove", added)).code == 0

        # Not in the group: the socket's mode keeps them out before the daemon is asked.
        outsider = await As(os_users, os_users.outsider, daemon)("status")
        assert (outsider.code, outsider.stdout) == (3, "")
        assert "permission denied on the daemon's socket" in outsider.stderr
    finally:
        await daemon.stop()


async def test_configured_groups_under_hidden_proc(
    os_users: OsUsers,
    sandbox: Sandbox,
    database_dsn: str,
    workdir: Path,
    hidden_proc: tuple[str, ...] | None,
) -> None:
    """allowed_group and admin_group, with /proc hidden: supplementary groups from the socket."""
    if hidden_proc is None:
        pytest.skip("cannot mount /proc with hidepid=invisible here (needs CAP_SYS_ADMIN)")
    daemon = await start_as_service(
        os_users,
        sandbox,
        database_dsn,
        workdir,
        hide_proc=hidden_proc,
        run_mode=0o755,
        socket_mode=0o666,  # everyone reaches the daemon: its own check decides
        allowed_group=os_users.ops_group,
        admin_group=os_users.adm_group,
    )
    try:
        assert_proc_hidden(daemon)
        assert daemon.socket.stat().st_gid == os_users.gid(os_users.ops_group)
        member = As(os_users, os_users.member, daemon)
        assert (await member("status")).code == 0
        line = refused_line(await member.add(TENANTS[1], "m2"))
        assert f"group {os_users.adm_group} (control.admin_group)" in line

        lead = As(os_users, os_users.lead, daemon)
        added = credential_id(await lead.add(TENANTS[1], "l1"))
        assert (await lead("credentials", "update", added, "--company-name", "Renamed")).code == 0
        assert (await lead("credentials", "remove", added)).code == 0

        line = refused_line(await As(os_users, os_users.outsider, daemon)("status"))
        assert f"usermod -aG {os_users.ops_group} $USER" in line
    finally:
        await daemon.stop()


async def test_a_group_the_service_user_is_not_in_stops_start_up_with_one_line(
    os_users: OsUsers, sandbox: Sandbox, database_dsn: str, workdir: Path
) -> None:
    with pytest.raises(StsyncError) as info:
        await start_as_service(
            os_users,
            sandbox,
            database_dsn,
            workdir,
            hide_proc=None,
            run_mode=0o750,
            allowed_group=os_users.adm_group,
        )
    assert f"cannot give the control socket to group {os_users.adm_group}" in str(info.value)
    assert f"SupplementaryGroups={os_users.adm_group}" in str(info.value)
