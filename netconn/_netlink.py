"""A small rtnetlink client: dumps of links, addresses and routes, route look-ups, events.

The standard library has no rtnetlink calls, and the few messages the path
layer needs (``RTM_GETLINK``, ``RTM_GETADDR``, ``RTM_GETROUTE`` and the
multicast groups that announce changes) are fixed C structs followed by
type-length-value attributes, so they are read here with :mod:`struct`
(see ``rtnetlink(7)``). Every socket opened here belongs to the network
namespace of the thread that opened it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "EVENT_GROUPS",
    "Link",
    "LinkAddress",
    "Route",
    "dump_addresses",
    "dump_links",
    "dump_routes",
    "event_socket",
    "open_query_socket",
    "route_get",
]

# Message types (linux/rtnetlink.h).
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300

# Multicast groups (the legacy RTMGRP_* bit masks).
_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_IFADDR = 0x100
_RTMGRP_IPV6_ROUTE = 0x400
EVENT_GROUPS = (
    _RTMGRP_LINK
    | _RTMGRP_IPV4_IFADDR
    | _RTMGRP_IPV6_IFADDR
    | _RTMGRP_IPV4_ROUTE
    | _RTMGRP_IPV6_ROUTE
)
"""Link, address and route changes for IPv4 and IPv6."""

# Attributes.
_IFLA_IFNAME = 3
_IFLA_OPERSTATE = 16
_IFLA_LINKINFO = 18
_IFLA_INFO_KIND = 1
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_IFA_FLAGS = 8
_RTA_DST = 1
_RTA_OIF = 4
_RTA_GATEWAY = 5
_RTA_PRIORITY = 6
_RTA_PREFSRC = 7
_RTA_TABLE = 15

_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_RUNNING = 0x40
_IFF_LOWER_UP = 0x10000
_IFA_F_DADFAILED = 0x08
_IFA_F_TENTATIVE = 0x40
_OPER_UP = 6
_OPER_UNKNOWN = 0  # loopback and some virtual links never report "up"

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_seq = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Link:
    """One ``RTM_NEWLINK`` record."""

    index: int
    name: str
    arphrd: int
    """Hardware type (``ARPHRD_*``)."""
    flags: int
    kind: str
    """Driver kind from ``IFLA_INFO_KIND`` (``veth``, ``bridge``...); empty for hardware."""
    operstate: int

    @property
    def is_up(self) -> bool:
        """Administratively up with a carrier (``IFF_UP`` and ``IFF_LOWER_UP`` or running)."""
        if not self.flags & _IFF_UP:
            return False
        if self.flags & _IFF_LOOPBACK:
            return True
        return bool(self.flags & (_IFF_LOWER_UP | _IFF_RUNNING)) and self.operstate in (
            _OPER_UP,
            _OPER_UNKNOWN,
        )

    @property
    def is_loopback(self) -> bool:
        """Whether the kernel flags it as loopback."""
        return bool(self.flags & _IFF_LOOPBACK)


@dataclass(frozen=True, slots=True)
class LinkAddress:
    """One ``RTM_NEWADDR`` record."""

    index: int
    family: int
    address: str
    prefix_length: int
    usable: bool
    """False while duplicate address detection runs or after it failed."""


@dataclass(frozen=True, slots=True)
class Route:
    """One ``RTM_NEWROUTE`` record (or the answer to a look-up)."""

    family: int
    destination: str | None
    """The network address; ``None`` for a default route."""
    prefix_length: int
    oif: int
    """Output interface index; 0 when the route has none (blackhole, multipath)."""
    gateway: str | None
    preferred_source: str | None
    priority: int
    """The metric; lower wins."""
    table: int
    type: int
    """``RTN_UNICAST`` (1), ``RTN_LOCAL`` (2), ..."""


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while start + 4 <= end:
        length, kind = _RTATTR.unpack_from(data, start)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[start + 4 : start + length]  # strip NLA_F_NESTED
        start += (length + 3) & ~3
    return found


def _messages(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(type, whole message, offset of the payload) for each message in ``data``."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq_no, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            return
        yield kind, data[offset : offset + length], _HEADER.size
        offset += (length + 3) & ~3


def open_query_socket() -> socket.socket:
    """A blocking netlink socket for dumps and look-ups in the calling thread's namespace.

    Pass it as ``sock`` to the functions here to ask *that* namespace later,
    whichever namespace the calling thread is in by then.
    """
    return _open()


def _open() -> socket.socket:
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    )
    sock.bind((0, 0))
    return sock


def _request(kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
    seq = next(_seq)
    return seq, _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


def _dump(kind: int, body: bytes, sock: socket.socket | None) -> list[tuple[int, bytes, int]]:
    """Every message of a dump; raises ``OSError`` if the kernel answers with an error."""
    out: list[tuple[int, bytes, int]] = []
    with _borrowed(sock) as sock:
        seq, request = _request(kind, _NLM_F_REQUEST | _NLM_F_DUMP, body)
        sock.send(request)
        while True:
            data = sock.recv(1 << 16)
            for msg_kind, message, start in _messages(data):
                if _HEADER.unpack_from(message)[3] != seq:
                    continue
                if msg_kind == _NLMSG_DONE:
                    return out
                if msg_kind == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", message, start)
                    if code:
                        raise OSError(-code, f"netlink dump failed: {errno.errorcode.get(-code)}")
                    return out
                out.append((msg_kind, message, start))


def parse_link(message: bytes, start: int) -> Link:
    """The link in one ``RTM_NEWLINK`` / ``RTM_DELLINK`` message."""
    _family, arphrd, index, flags, _change = _IFINFOMSG.unpack_from(message, start)
    attrs = _attributes(message, start + _IFINFOMSG.size, len(message))
    name = attrs.get(_IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
    kind = ""
    if _IFLA_LINKINFO in attrs:
        info = attrs[_IFLA_LINKINFO]
        kind = _attributes(info, 0, len(info)).get(_IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
    operstate = attrs.get(_IFLA_OPERSTATE, b"\0")[0]
    return Link(index, name, arphrd, flags, kind, operstate)


@contextlib.contextmanager
def _borrowed(sock: socket.socket | None) -> Iterator[socket.socket]:
    """``sock`` as is, or a fresh socket closed after use."""
    if sock is not None:
        yield sock
        return
    with _open() as fresh:
        yield fresh


def dump_links(sock: socket.socket | None = None) -> list[Link]:
    """Every link of this network namespace."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return [
        parse_link(m, s) for kind, m, s in _dump(RTM_GETLINK, body, sock) if kind == RTM_NEWLINK
    ]


def dump_addresses(sock: socket.socket | None = None) -> list[LinkAddress]:
    """Every IPv4 and IPv6 address of this network namespace."""
    out = []
    body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    for kind, message, start in _dump(RTM_GETADDR, body, sock):
        if kind != RTM_NEWADDR:
            continue
        family, plen, flags, _scope, index = _IFADDRMSG.unpack_from(message, start)
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        attrs = _attributes(message, start + _IFADDRMSG.size, len(message))
        raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
        if raw is None:
            continue
        if _IFA_FLAGS in attrs:
            (flags,) = struct.unpack("=I", attrs[_IFA_FLAGS][:4])
        usable = not flags & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED)
        out.append(LinkAddress(index, family, socket.inet_ntop(family, raw), plen, usable))
    return out


def _parse_route(message: bytes, start: int) -> Route:
    family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(
        message, start
    )
    attrs = _attributes(message, start + _RTMSG.size, len(message))

    def address(key: int) -> str | None:
        raw = attrs.get(key)
        return None if raw is None else socket.inet_ntop(family, raw)

    if _RTA_TABLE in attrs:
        (table,) = struct.unpack("=I", attrs[_RTA_TABLE][:4])
    oif = struct.unpack("=i", attrs[_RTA_OIF][:4])[0] if _RTA_OIF in attrs else 0
    priority = struct.unpack("=I", attrs[_RTA_PRIORITY][:4])[0] if _RTA_PRIORITY in attrs else 0
    return Route(
        family,
        address(_RTA_DST),
        dst_len,
        oif,
        address(_RTA_GATEWAY),
        address(_RTA_PREFSRC),
        priority,
        table,
        rtype,
    )


def dump_routes(sock: socket.socket | None = None) -> list[Route]:
    """Every IPv4 and IPv6 route of every table in this network namespace."""
    out: list[Route] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        out.extend(
            _parse_route(m, s)
            for kind, m, s in _dump(RTM_GETROUTE, body, sock)
            if kind == RTM_NEWROUTE
        )
    return out


def route_get(destination: str, sock: socket.socket | None = None) -> Route | None:
    """The route the kernel picks for ``destination`` now (``ip route get``), or ``None``.

    Returns ``None`` when there is no route (``ENETUNREACH``, ``EHOSTUNREACH``).
    """
    host = destination.split("%", 1)[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.inet_pton(family, host)
    attr = _RTATTR.pack(_RTATTR.size + len(raw), _RTA_DST) + raw
    body = _RTMSG.pack(family, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0) + attr
    with _borrowed(sock) as sock:
        seq, request = _request(RTM_GETROUTE, _NLM_F_REQUEST, body)
        sock.send(request)
        while True:
            data = sock.recv(1 << 16)
            for kind, message, start in _messages(data):
                if _HEADER.unpack_from(message)[3] != seq:
                    continue
                if kind == RTM_NEWROUTE:
                    return _parse_route(message, start)
                if kind == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", message, start)
                    if -code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                        return None
                    raise OSError(-code, f"route look-up failed: {errno.errorcode.get(-code)}")


def event_socket(groups: int = EVENT_GROUPS) -> socket.socket:
    """A non-blocking netlink socket subscribed to ``groups`` (link, address, route events)."""
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, groups))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def event_kinds(data: bytes) -> list[int]:
    """The message types in one datagram read from an :func:`event_socket`."""
    return [kind for kind, _m, _s in _messages(data)]
