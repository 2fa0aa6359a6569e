"""Who may use the control socket, and for what.

The kernel tells us who connected: `SO_PEERCRED` (pid, uid, gid) and `SO_PEERGROUPS` (the
supplementary groups), both as they were at connect(). Nothing is read from /proc, which the
shipped unit hides (`ProtectProc=invisible`). Without `SO_PEERGROUPS` (Linux < 4.13, or more groups
than one getsockopt() can return) the groups come from the group database instead. A peer that
cannot be identified is refused.

Three levels, from the route: reading (status, runs, reports, credentials list/show), operating
(run, retry or cancel syncs, test a credential) and administering (change credentials). Root, the
daemon's own user and members of `[control] admin_group` may do everything; members of
`[control] allowed_group` (default: the daemon's own group) may read and operate. A route this
module does not list needs administering, so that a new endpoint is closed until it is classified.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from aiohttp import web

from ..errors import ConfigError
from .protocol import API_PREFIX

# Python's socket module lacks it on some builds; its value is 59 on every Linux architecture.
SO_PEERGROUPS: int = getattr(socket, "SO_PEERGROUPS", 59)
# CPython's getsockopt() returns at most 1024 bytes: 256 groups. More fall back to the database.
_PEERGROUPS_BUFFER = 1024
_GID = struct.Struct("=I")
_UCRED = struct.Struct("=iII")


class Level(StrEnum):
    """What a request does to the daemon, from least to most trusted."""

    READ = "read"
    OPERATE = "operate"
    ADMINISTER = "administer"


_RANK = {Level.READ: 0, Level.OPERATE: 1, Level.ADMINISTER: 2}


@dataclass(frozen=True)
class Route:
    """One endpoint: the level it needs and the command name used in refusals."""

    level: Level
    command: str


_P = API_PREFIX
ROUTES: Mapping[tuple[str, str], Route] = {
    ("GET", f"{_P}/health"): Route(Level.READ, "health"),
    ("GET", f"{_P}/status"): Route(Level.READ, "status"),
    ("GET", f"{_P}/runs"): Route(Level.READ, "runs"),
    ("GET", f"{_P}/syncs/{{id}}"): Route(Level.READ, "show"),
    ("GET", f"{_P}/instances"): Route(Level.READ, "instances"),
    ("GET", f"{_P}/schedules"): Route(Level.READ, "schedules"),
    ("GET", f"{_P}/report"): Route(Level.READ, "report"),
    ("GET", f"{_P}/dead-letters"): Route(Level.READ, "dead-letters"),
    ("GET", f"{_P}/credentials"): Route(Level.READ, "credentials list"),
    ("GET", f"{_P}/credentials/{{id}}"): Route(Level.READ, "credentials show"),
    ("POST", f"{_P}/process"): Route(Level.OPERATE, "process"),
    ("POST", f"{_P}/retry"): Route(Level.OPERATE, "retry"),
    ("POST", f"{_P}/cancel/{{target}}"): Route(Level.OPERATE, "cancel"),
    ("POST", f"{_P}/credentials/{{id}}/test"): Route(Level.OPERATE, "credentials test"),
    ("POST", f"{_P}/schedules/{{name}}/pause"): Route(Level.OPERATE, "schedules pause"),
    ("POST", f"{_P}/schedules/{{name}}/resume"): Route(Level.OPERATE, "schedules resume"),
    ("POST", f"{_P}/credentials"): Route(Level.ADMINISTER, "credentials add"),
    ("PATCH", f"{_P}/credentials/{{id}}"): Route(Level.ADMINISTER, "credentials update"),
    ("DELETE", f"{_P}/credentials/{{id}}"): Route(Level.ADMINISTER, "credentials remove"),
    ("POST", f"{_P}/credentials/{{id}}/enable"): Route(Level.ADMINISTER, "credentials enable"),
    ("POST", f"{_P}/credentials/{{id}}/disable"): Route(Level.ADMINISTER, "credentials disable"),
}
# What a request no route matches needs: the lowest level, so that whoever may use the socket at
# all gets the 404 or 405 that tells them what is wrong.
_UNROUTED = Route(Level.READ, "an unknown request")


def route_of(request: web.Request) -> Route:
    """The level and command name of a request, from the route aiohttp matched."""
    if request.match_info.http_exception is not None:
        return _UNROUTED
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else ""
    method = "GET" if request.method == "HEAD" else request.method
    return ROUTES.get((method, path), Route(Level.ADMINISTER, f"{method} {path}"))


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a control connection, as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]

    def member_of(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


class SocketLike(Protocol):
    """What a transport's "socket" extra gives us: asyncio's TransportSocket, uvloop's, or a socket."""

    @property
    def family(self) -> int: ...

    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


def peer_credentials(sock: SocketLike) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connected peer, by SO_PEERCRED."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def socket_groups(sock: SocketLike) -> frozenset[int] | None:
    """The peer's supplementary groups by SO_PEERGROUPS; None when the kernel cannot tell us."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_BUFFER)
    except OSError as exc:
        # ENOPROTOOPT: a kernel before 4.13; ERANGE: more groups than the buffer holds.
        if exc.errno in (errno.ENOPROTOOPT, errno.ERANGE, errno.EINVAL):
            return None
        raise
    count = len(raw) // _GID.size
    return frozenset(_GID.unpack_from(raw, i * _GID.size)[0] for i in range(count))


def database_groups(uid: int, gid: int) -> frozenset[int]:
    """The groups the group database gives the user `uid` (just `gid` when it has no name)."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return frozenset({gid})
    return frozenset(os.getgrouplist(name, gid))


def identify(sock: SocketLike | None, *, peergroups: bool = True) -> Peer | None:
    """The peer of a Unix socket connection; None when it cannot be identified.

    `peergroups=False` skips SO_PEERGROUPS, as on a kernel without it (tests use this).
    """
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        pid, uid, gid = peer_credentials(sock)
        groups = socket_groups(sock) if peergroups else None
    except OSError:
        return None
    if groups is None:
        groups = database_groups(uid, gid)
    return Peer(pid=pid, uid=uid, gid=gid, groups=groups)


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: a one-line message for the client and fields for the log."""

    message: str
    fields: Mapping[str, object]


def _group_id(key: str, value: str) -> int:
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        if value.isdigit():
            return int(value)
        raise ConfigError(f"control.{key}: no group named {value!r}") from None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True)
class AccessPolicy:
    """Who may do what over the control socket; build it with `configured()`."""

    service_uid: int
    allowed_gid: int
    admin_gid: int | None = None

    @classmethod
    def configured(cls, allowed_group: str | None, admin_group: str | None) -> AccessPolicy:
        """The policy of a daemon running as this process: `allowed_group` defaults to its group."""
        allowed = _group_id("allowed_group", allowed_group) if allowed_group else os.getegid()
        admin = _group_id("admin_group", admin_group) if admin_group else None
        return cls(service_uid=os.geteuid(), allowed_gid=allowed, admin_gid=admin)

    def level_of(self, peer: Peer) -> Level | None:
        """The most a peer may do; None: it may not use the socket at all."""
        if peer.uid in (0, self.service_uid):
            return Level.ADMINISTER
        if self.admin_gid is not None and peer.member_of(self.admin_gid):
            return Level.ADMINISTER
        if peer.member_of(self.allowed_gid):
            return Level.OPERATE
        return None

    def refusal(self, peer: Peer | None, route: Route) -> Refusal | None:
        """None when `peer` may make a request of `route`, else why not."""
        if peer is None:
            return Refusal(
                "not authorised: the daemon cannot identify the connecting process (no "
                "SO_PEERCRED on this connection), so it refuses it",
                {"command": route.command},
            )
        level = self.level_of(peer)
        fields = {"uid": peer.uid, "gid": peer.gid, "pid": peer.pid, "command": route.command}
        group = _group_name(self.allowed_gid)
        if level is None:
            return Refusal(
                f"not authorised: only root, user {user_name(self.service_uid)} and members of "
                f"group {group} (control.allowed_group) may use this socket; is your user in the "
                f"{group} group? (id -nG; sudo usermod -aG {group} $USER, then log in again)",
                fields,
            )
        if _RANK[level] >= _RANK[route.level]:
            return None
        service = user_name(self.service_uid)
        if self.admin_gid is None:
            admins = f"root and user {service} may do (control.admin_group can name a group too)"
        else:
            admin_group = _group_name(self.admin_gid)
            admins = f"root, user {service} and group {admin_group} (control.admin_group) may do"
        return Refusal(
            f"not authorised: {route.command} changes the configuration, which only {admins}; "
            f"members of group {group} may read and run syncs",
            fields,
        )


def hand_over_socket(path: Path, mode: int, policy: AccessPolicy) -> None:
    """Give the socket its mode and the allowed group, so that the group's members can connect."""
    os.chmod(path, mode)
    if path.stat().st_gid == policy.allowed_gid:
        return
    try:
        os.chown(path, -1, policy.allowed_gid)
    except PermissionError:
        group = _group_name(policy.allowed_gid)
        raise ConfigError(
            f"control.allowed_group: cannot give the control socket to group {group}: the daemon's "
            f"user must be a member of it (SupplementaryGroups={group} in the unit)"
        ) from None
