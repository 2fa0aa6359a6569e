"""Real OS users for the control socket's access tests, created with useradd for the session.

Four users and three groups, named with this process's id so that concurrent sessions never share
them: `svc` (the daemon's user; its own group, plus `ops`), `member` (in `svc` and `ops`), `lead`
(also in `adm`) and `outsider` (in none). Everything is removed at the end of the session.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# CAP_DAC_READ_SEARCH, lent to processes run as the test users when the interpreter sits where they
# may not go (/root/.pyenv, say). It lets them read files, never write them: a socket still needs
# write permission to connect, so the kernel's and the daemon's checks stay what they are.
_CAP_DAC_READ_SEARCH = 2


@dataclass(frozen=True)
class OsUser:
    """One created user: its name, uid, primary gid and every group it is in."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]


@dataclass(frozen=True)
class OsUsers:
    """The session's users and groups, and how to run a program as one of them."""

    svc: OsUser
    member: OsUser
    lead: OsUser
    outsider: OsUser
    svc_group: str
    ops_group: str
    adm_group: str
    lend_read: bool

    def gid(self, group: str) -> int:
        return grp.getgrnam(group).gr_gid

    def prefix(self, user: OsUser) -> tuple[str, ...]:
        """A command prefix running a program as `user`, with its groups from the group database."""
        caps = (
            ("--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
            if self.lend_read
            else ()
        )
        return (
            "setpriv",
            f"--reuid={user.uid}",
            f"--regid={user.gid}",
            "--init-groups",
            *caps,
            "--",
        )


def _reachable_by_others(path: Path) -> bool:
    """Whether a user in none of the owners' groups can reach (and read) `path`."""
    path = path.resolve()
    for parent in path.parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return bool(path.stat().st_mode & stat.S_IROTH)


def _has_capability(number: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return bool(int(line.split()[1], 16) >> number & 1)
    return False


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def _user(name: str) -> OsUser:
    entry = pwd.getpwnam(name)
    groups = frozenset(os.getgrouplist(name, entry.pw_gid))
    return OsUser(name, entry.pw_uid, entry.pw_gid, groups)


@pytest.fixture(scope="session")
def os_users() -> Iterator[OsUsers]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the tests create OS users and connect as them")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} to create OS users and act as them")
    lend_read = not all(_reachable_by_others(p) for p in (Path(sys.executable), Path(__file__)))
    if lend_read and not _has_capability(_CAP_DAC_READ_SEARCH):
        pytest.skip(
            f"{sys.executable} is not readable by other users and CAP_DAC_READ_SEARCH is not "
            "available to lend them"
        )
    tag = f"stt{os.getpid()}"
    svc, ops, adm = f"{tag}svc", f"{tag}ops", f"{tag}adm"
    users = {
        "svc": [ops],
        "member": [svc, ops],
        "lead": [svc, ops, adm],
        "outsider": [],
    }
    created_groups: list[str] = []
    created_users: list[str] = []
    try:
        for group in (ops, adm):
            _run("groupadd", group)
            created_groups.append(group)
        for role, groups in users.items():
            name = svc if role == "svc" else f"{tag}{role[:3]}"
            argv = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
            if groups:
                argv += ["--groups", ",".join(groups)]
            _run(*argv, name)
            created_users.append(name)
        yield OsUsers(
            svc=_user(svc),
            member=_user(f"{tag}mem"),
            lead=_user(f"{tag}lea"),
            outsider=_user(f"{tag}out"),
            svc_group=svc,
            ops_group=ops,
            adm_group=adm,
            lend_read=lend_read,
        )
    finally:
        # userdel removes each user's own group (--user-group) once nobody else is in it.
        for name in reversed(created_users):
            subprocess.run(["userdel", name], check=False, capture_output=True)
        for name in [*created_groups, *created_users]:
            subprocess.run(["groupdel", name], check=False, capture_output=True)
