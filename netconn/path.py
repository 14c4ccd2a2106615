"""Paths: which interface a connection uses and what the host knows of it.

Interfaces and their addresses come from the kernel over rtnetlink (an
``RTM_GETADDR`` dump, read here in a few lines because the standard library
has no such call); their types come from ``/sys/class/net``.
"""

from __future__ import annotations

import enum
import os
import socket
import struct
from dataclasses import dataclass, field

from .endpoint import Address

__all__ = [
    "Interface",
    "InterfaceType",
    "Path",
    "PathStatus",
    "interface_for_address",
    "list_interfaces",
]


class InterfaceType(enum.Enum):
    """What kind of link an interface is."""

    LOOPBACK = "loopback"
    WIRED = "wired"
    WIFI = "wifi"
    CELLULAR = "cellular"
    OTHER = "other"


class PathStatus(enum.Enum):
    """Whether a path can be used."""

    SATISFIED = "satisfied"
    UNSATISFIED = "unsatisfied"
    REQUIRES_CONNECTION = "requires_connection"


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface of this host."""

    name: str
    """Kernel name, e.g. ``eth0``."""
    index: int
    """Kernel interface index."""
    type: InterfaceType
    """Kind of link, classified from ``/sys/class/net``."""
    addresses: tuple[str, ...] = ()
    """IP addresses assigned to it."""

    @property
    def is_expensive(self) -> bool:
        """Cellular links are expensive by default."""
        return self.type is InterfaceType.CELLULAR


@dataclass(frozen=True, slots=True)
class Path:
    """The path a connection uses: its status, interface and endpoints."""

    status: PathStatus = PathStatus.SATISFIED
    """Whether the path is usable."""
    interface: Interface | None = None
    """The interface carrying the connection, when known."""
    local: Address | None = None
    """The local address and port."""
    remote: Address | None = None
    """The remote address and port."""
    unsatisfied_reason: str = ""
    """Why the path is unusable, when it is."""
    available_interfaces: tuple[Interface, ...] = field(default=(), compare=False)
    """Every interface the host had when the path was evaluated."""

    def uses_interface_type(self, kind: InterfaceType) -> bool:
        """Whether the connection runs over an interface of type ``kind``."""
        return self.interface is not None and self.interface.type is kind

    @property
    def is_expensive(self) -> bool:
        """Whether the interface is marked expensive (cellular by default)."""
        return self.interface is not None and self.interface.is_expensive

    @property
    def supports_ipv4(self) -> bool:
        """Whether any interface other than loopback has an IPv4 address, or we use IPv4."""
        return self._supports(socket.AF_INET)

    @property
    def supports_ipv6(self) -> bool:
        """Whether any interface has a global IPv6 address, or we use IPv6."""
        return self._supports(socket.AF_INET6)

    def _supports(self, family: socket.AddressFamily) -> bool:
        if self.local is not None and self.local.family == family:
            return True
        want_v6 = family == socket.AF_INET6
        return any(
            (":" in a) == want_v6 and not a.startswith("fe80")
            for i in self.available_interfaces
            for a in i.addresses
        )

    def describe(self) -> str:
        """One line for people: ``eth0 (wired) 10.0.0.2:5000 -> 10.0.0.1:443``."""
        name = f"{self.interface.name} ({self.interface.type.value})" if self.interface else "?"
        parts = [name, f"{self.local} -> {self.remote}"]
        if self.status is not PathStatus.SATISFIED:
            parts.append(f"[{self.status.value}: {self.unsatisfied_reason}]")
        return " ".join(parts)


_RTM_GETADDR = 22
_RTM_NEWADDR = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_DONE = 3
_NLMSG_ERROR = 2
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_ARPHRD_LOOPBACK = 772
_ARPHRD_ETHER = 1
_ARPHRD_NONE = 65534


def _interface_type(name: str) -> InterfaceType:
    base = f"/sys/class/net/{name}"
    try:
        with open(f"{base}/type") as f:
            arphrd = int(f.read().strip())
    except (OSError, ValueError):
        return InterfaceType.OTHER
    if arphrd == _ARPHRD_LOOPBACK:
        return InterfaceType.LOOPBACK
    if os.path.exists(f"{base}/wireless") or os.path.exists(f"{base}/phy80211"):
        return InterfaceType.WIFI
    if name.startswith(("wwan", "rmnet", "ccmni")):
        return InterfaceType.CELLULAR
    if arphrd == _ARPHRD_NONE and name.startswith("wwan"):
        return InterfaceType.CELLULAR
    if arphrd == _ARPHRD_ETHER and not os.path.exists(f"{base}/bridge"):
        return InterfaceType.WIRED
    return InterfaceType.OTHER


def _dump_addresses() -> dict[int, list[str]]:
    """Interface index -> addresses, from one ``RTM_GETADDR`` dump."""
    result: dict[int, list[str]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        # struct nlmsghdr + struct ifaddrmsg (family 0 = all)
        request = struct.pack("=IHHII", 24, _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
        request += struct.pack("=BBBBI", 0, 0, 0, 0, 0)
        sock.send(request)
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    return result
                if kind in (_NLMSG_DONE, _NLMSG_ERROR):
                    return result
                if kind == _RTM_NEWADDR:
                    family, _plen, _aflags, _scope, index = struct.unpack_from(
                        "=BBBBI", data, offset + 16
                    )
                    address = _parse_address(data, offset + 24, offset + length, family)
                    if address is not None:
                        result.setdefault(index, []).append(address)
                offset += (length + 3) & ~3


def _parse_address(data: bytes, start: int, end: int, family: int) -> str | None:
    found: dict[int, bytes] = {}
    while start + 4 <= end:
        rta_len, rta_type = struct.unpack_from("=HH", data, start)
        if rta_len < 4:
            break
        found[rta_type] = data[start + 4 : start + rta_len]
        start += (rta_len + 3) & ~3
    raw = found.get(_IFA_LOCAL) or found.get(_IFA_ADDRESS)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return socket.inet_ntop(family, raw)


def list_interfaces() -> tuple[Interface, ...]:
    """Every interface of this host, with its type and addresses."""
    try:
        addresses = _dump_addresses()
    except OSError:
        addresses = {}
    interfaces = []
    for index, name in socket.if_nameindex():
        interfaces.append(
            Interface(name, index, _interface_type(name), tuple(addresses.get(index, ())))
        )
    return tuple(interfaces)


def interface_for_address(
    host: str, interfaces: tuple[Interface, ...] | None = None
) -> Interface | None:
    """The interface that holds local address ``host``, if any."""
    bare = host.split("%", 1)[0]
    if bare.startswith("::ffff:"):
        bare = bare[7:]
    for interface in interfaces if interfaces is not None else list_interfaces():
        if bare in interface.addresses:
            return interface
    return None


def path_for(local: Address | None, remote: Address | None) -> Path:
    """The path of a connection with these endpoints, as the host sees it now."""
    interfaces = list_interfaces()
    interface = interface_for_address(local.host, interfaces) if local else None
    return Path(
        PathStatus.SATISFIED,
        interface,
        local,
        remote,
        available_interfaces=interfaces,
    )
