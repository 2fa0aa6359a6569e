"""Who may use the control socket, and for what: the peer as the kernel reports it, the policy, and
the real server's guard, each with real OS users connecting from forked processes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from stsync_daemon.control.access import (
    ROUTES,
    AccessPolicy,
    Level,
    Peer,
    Route,
    database_groups,
    identify,
    socket_groups,
)
from stsync_daemon.control.server import ControlServer, ControlServices
from stsync_daemon.errors import ConfigError

from .conftest import OsUser, OsUsers

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short, world-traversable directory (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="stacc-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def in_child(become: Callable[[], None], work: Callable[[], bytes]) -> bytes:
    """Fork; the child calls `become()` (drop to a user) then `work()`, whose bytes it sends back."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            become()
            os.write(write, work())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    return out


def as_user(user: OsUser) -> Callable[[], None]:
    def become() -> None:
        os.initgroups(user.name, user.gid)
        os.setgid(user.gid)
        os.setuid(user.uid)

    return become


def with_groups(groups: list[int]) -> Callable[[], None]:
    def become() -> None:
        os.setgroups(groups)

    return become


# -- the peer, from the kernel ------------------------------------------------------------------


def _accepting(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o666)
    listener.listen(1)
    return listener


def _connect(path: Path) -> Callable[[], bytes]:
    def work() -> bytes:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        client.close()
        return b""

    return work


@needs_root
def test_groups_come_from_the_socket_even_once_the_peer_is_gone(short_dir: Path) -> None:
    """SO_PEERGROUPS reports the groups at connect(): nothing to read in /proc, which
    ProtectProc=invisible hides (and which is gone here, with the process)."""
    listener = _accepting(short_dir / "s")
    in_child(with_groups([4242, 4343]), _connect(short_dir / "s"))  # connects, then exits
    connection, _ = listener.accept()
    with listener, connection:
        assert not Path(f"/proc/{identify(connection).pid}").exists()  # type: ignore[union-attr]
        assert socket_groups(connection) == {4242, 4343}
        peer = identify(connection)
        assert peer is not None and (peer.uid, peer.gid) == (0, 0)
        assert peer.groups == {4242, 4343}
        # Without SO_PEERGROUPS, the group database: root's groups, not the ones it set itself.
        fallback = identify(connection, peergroups=False)
        assert fallback is not None and fallback.groups == database_groups(0, 0)
        assert 4242 not in fallback.groups


@needs_root
def test_a_real_users_groups_either_way(short_dir: Path, os_users: OsUsers) -> None:
    listener = _accepting(short_dir / "s")
    member = os_users.member
    in_child(as_user(member), _connect(short_dir / "s"))
    connection, _ = listener.accept()
    with listener, connection:
        by_socket = identify(connection)
        by_database = identify(connection, peergroups=False)
    assert by_socket is not None and by_database is not None
    assert (by_socket.uid, by_socket.gid) == (member.uid, member.gid)
    assert by_socket.groups == by_database.groups == member.groups
    assert os_users.gid(os_users.svc_group) in by_socket.groups


def test_a_peer_that_cannot_be_identified_is_refused() -> None:
    assert identify(None) is None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert identify(tcp) is None
    policy = AccessPolicy(service_uid=os.geteuid(), allowed_gid=os.getegid())
    refusal = policy.refusal(None, Route(Level.READ, "status"))
    assert refusal is not None and "cannot identify the connecting process" in refusal.message


def test_database_groups_of_a_uid_without_a_name() -> None:
    assert database_groups(2_000_000_123, 4242) == {4242}


# -- the policy ---------------------------------------------------------------------------------


def _peer(uid: int, gid: int, *groups: int) -> Peer:
    return Peer(pid=1, uid=uid, gid=gid, groups=frozenset(groups))


def test_levels() -> None:
    policy = AccessPolicy(service_uid=900, allowed_gid=900, admin_gid=950)
    assert policy.level_of(_peer(0, 0)) is Level.ADMINISTER
    assert policy.level_of(_peer(900, 12345)) is Level.ADMINISTER  # the service user
    assert policy.level_of(_peer(1001, 1001, 900, 950)) is Level.ADMINISTER
    assert policy.level_of(_peer(1002, 1002, 900)) is Level.OPERATE
    assert policy.level_of(_peer(1003, 900)) is Level.OPERATE  # primary group
    assert policy.level_of(_peer(1004, 1004, 950)) is Level.ADMINISTER  # admin only
    assert policy.level_of(_peer(1005, 1005, 901)) is None
    assert AccessPolicy(service_uid=900, allowed_gid=900).level_of(_peer(1, 1, 950)) is None


def test_members_read_and_operate_but_only_admins_change_credentials() -> None:
    policy = AccessPolicy(service_uid=900, allowed_gid=900)
    member = _peer(1002, 1002, 900)
    for route in ROUTES.values():
        refusal = policy.refusal(member, route)
        assert (refusal is None) == (route.level is not Level.ADMINISTER), route
    refused = [r.command for r in ROUTES.values() if policy.refusal(member, r) is not None]
    assert sorted(refused) == [
        "credentials add",
        "credentials disable",
        "credentials enable",
        "credentials remove",
        "credentials update",
    ]
    operating = [r.command for r in ROUTES.values() if r.level is Level.OPERATE]
    assert sorted(operating) == [
        "cancel",
        "credentials test",
        "process",
        "retry",
        "schedules pause",
        "schedules resume",
    ]


def test_default_allowed_group_is_the_daemons_own() -> None:
    policy = AccessPolicy.configured(None, None)
    assert (policy.service_uid, policy.allowed_gid, policy.admin_gid) == (
        os.geteuid(),
        os.getegid(),
        None,
    )
    assert AccessPolicy.configured("4321", "4322").allowed_gid == 4321
    with pytest.raises(ConfigError, match=r"control\.admin_group: no group named 'no-such-grp'"):
        AccessPolicy.configured(None, "no-such-grp")


# -- the real server's guard, with real users ---------------------------------------------------


@pytest.fixture
async def guarded(short_dir: Path, os_users: OsUsers) -> AsyncIterator[ControlServer]:
    """The control server with no daemon behind it: the guard answers before any handler runs,
    and requests that pass it get a 404 (unknown path) or a 400 (invalid body)."""
    server = ControlServer(
        services=cast(ControlServices, SimpleNamespace()),
        socket_path=short_dir / "control.sock",
        socket_mode=0o666,  # so that the daemon's own check is what refuses outsiders
        allowed_group=os_users.ops_group,
        admin_group=os_users.adm_group,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _http(path: Path, method: str, target: str, body: bytes = b"{}") -> Callable[[], bytes]:
    def work() -> bytes:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        client.sendall(head.encode() + body)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        client.close()
        return answer

    return work


async def request_as(
    user: OsUser, server: ControlServer, method: str, target: str
) -> tuple[int, Any]:
    raw = await asyncio.to_thread(in_child, as_user(user), _http(server.path, method, target))
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@needs_root
async def test_the_socket_is_handed_to_the_allowed_group(
    guarded: ControlServer, os_users: OsUsers
) -> None:
    info = guarded.path.stat()
    assert info.st_gid == os_users.gid(os_users.ops_group) and info.st_mode & 0o777 == 0o666


@needs_root
async def test_outsider_is_refused_with_the_forbidden_body(
    guarded: ControlServer, os_users: OsUsers
) -> None:
    status, body = await request_as(os_users.outsider, guarded, "GET", "/v1/status")
    assert status == 403 and body["code"] == "forbidden" and set(body) == {"message", "code"}
    assert f"members of group {os_users.ops_group} (control.allowed_group)" in body["message"]
    assert f"usermod -aG {os_users.ops_group} $USER" in body["message"]
    # Refused before routing is of any use to it: unknown paths too.
    assert (await request_as(os_users.outsider, guarded, "GET", "/v1/nope"))[0] == 403


@needs_root
async def test_member_passes_the_guard_but_may_not_change_credentials(
    guarded: ControlServer, os_users: OsUsers
) -> None:
    member = os_users.member
    assert (await request_as(member, guarded, "GET", "/v1/nope"))[0] == 404
    for method, target, command in (
        ("POST", "/v1/credentials", "credentials add"),
        ("PATCH", f"/v1/credentials/{'0' * 8}-0000-0000-0000-{'0' * 12}", "credentials update"),
        ("DELETE", "/v1/credentials/x", "credentials remove"),
        ("POST", "/v1/credentials/x/enable", "credentials enable"),
        ("POST", "/v1/credentials/x/disable", "credentials disable"),
    ):
        status, body = await request_as(member, guarded, method, target)
        assert (status, body["code"]) == (403, "forbidden"), (method, target)
        assert body["message"].startswith(f"not authorised: {command} changes the configuration")
        assert f"group {os_users.adm_group} (control.admin_group)" in body["message"]
    # Operating is theirs: the guard lets a cancel through to its handler (400: not an id).
    status, body = await request_as(member, guarded, "POST", "/v1/cancel/x")
    assert status == 400, body


@needs_root
async def test_admin_group_member_may_change_credentials(
    guarded: ControlServer, os_users: OsUsers
) -> None:
    # Past the guard, to the handler: a body without the required fields is a 400.
    status, body = await request_as(os_users.lead, guarded, "POST", "/v1/credentials")
    assert (status, body["code"]) == (400, "bad_request"), body


async def test_every_route_is_classified(short_dir: Path) -> None:
    """The table the README documents is the server's: no endpoint left to the fail-closed default."""
    server = ControlServer(
        services=cast(ControlServices, SimpleNamespace()),
        socket_path=short_dir / "control.sock",
        socket_mode=0o600,
        allowed_group=None,
    )
    await server.start()
    try:
        assert server._runner is not None
        served = {
            (route.method, route.resource.canonical)
            for route in server._runner.app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        }
    finally:
        await server.stop()
    assert served == set(ROUTES)
