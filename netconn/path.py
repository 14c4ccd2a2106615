"""Paths: which interface a connection uses and what the host knows of it.

How this works: :class:`HostNetwork` is one snapshot of the kernel's view,
taken over rtnetlink (links, addresses and every routing table; see
:mod:`netconn._netlink`). A :class:`Path` is evaluated from a snapshot: for a
connection, from its local and remote addresses (which interface holds the
local address, is it up, does a route through it still reach the remote);
for a :class:`~netconn.PathMonitor`, from the interfaces that are up and
allowed. Interface types come from the kernel (hardware type, link kind) and
``/sys/class/net`` (``wireless``, ``qmi``); whether an interface is expensive
or constrained is a host policy, set with :func:`configure_interface`.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _netlink
from .endpoint import Address

if TYPE_CHECKING:
    from .parameters import Parameters

__all__ = [
    "HostNetwork",
    "Interface",
    "InterfaceProperties",
    "InterfaceType",
    "Path",
    "PathStatus",
    "allowed_interfaces",
    "better_interface",
    "clear_interface_configuration",
    "configure_interface",
    "connection_path",
    "disallowed",
    "interface_for_address",
    "list_interfaces",
    "monitor_path",
    "path_for",
    "policy_version",
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
class InterfaceProperties:
    """Host policy for one interface; ``None`` keeps what the kernel says or the default."""

    type: InterfaceType | None = None
    """Override the classified type; default: keep it."""
    is_expensive: bool | None = None
    """Override expensiveness; default: cellular links are expensive."""
    is_constrained: bool | None = None
    """Override constrainedness (a low-data link); default: not constrained."""


_overrides: dict[str, InterfaceProperties] = {}
_policy_version = 0


def policy_version() -> int:
    """A number that changes whenever :func:`configure_interface` changes the policy."""
    return _policy_version


def configure_interface(
    name: str,
    *,
    type: InterfaceType | None = None,
    expensive: bool | None = None,
    constrained: bool | None = None,
) -> None:
    """Set the type, expensive or constrained flag of interface ``name`` for this process.

    Linux has no notion of an expensive or low-data link, so this is where an
    application (or a test lab) says which ones are. Takes effect at the next
    path evaluation; monitors see it at their next event.
    """
    global _policy_version
    _overrides[name] = InterfaceProperties(type, expensive, constrained)
    _policy_version += 1


def clear_interface_configuration(name: str | None = None) -> None:
    """Forget what :func:`configure_interface` set for ``name`` (every name if ``None``)."""
    global _policy_version
    if name is None:
        _overrides.clear()
    else:
        _overrides.pop(name, None)
    _policy_version += 1


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface of this host."""

    name: str
    """Kernel name, e.g. ``eth0``."""
    index: int
    """Kernel interface index."""
    type: InterfaceType
    """Kind of link, classified from the kernel and ``/sys/class/net``."""
    addresses: tuple[str, ...] = ()
    """Usable IP addresses assigned to it."""
    is_expensive: bool = False
    """Whether using it costs the user (cellular by default; see :func:`configure_interface`)."""
    is_constrained: bool = False
    """Whether the user asked to save data on it (see :func:`configure_interface`)."""
    is_up: bool = True
    """Administratively up with a carrier."""

    def __str__(self) -> str:
        return f"{self.name}[{self.type.value}]"


@dataclass(frozen=True, slots=True)
class Path:
    """The path a connection uses (or a monitor sees): status, interfaces, endpoints."""

    status: PathStatus = PathStatus.SATISFIED
    """Whether the path is usable."""
    interface: Interface | None = None
    """The interface carrying the connection; for a monitor, the primary interface."""
    local: Address | None = None
    """The local address and port."""
    remote: Address | None = None
    """The remote address and port."""
    unsatisfied_reason: str = ""
    """Why the path is unusable, when it is."""
    available_interfaces: tuple[Interface, ...] = field(default=())
    """The interfaces that are up and allowed, when the path was evaluated."""
    gateways: tuple[str, ...] = ()
    """Default-route gateways through the path's interfaces."""
    supports_dns: bool = False
    """Whether a configured DNS server is reachable over the path's interfaces."""

    def uses_interface_type(self, kind: InterfaceType) -> bool:
        """Whether the path runs over an interface of type ``kind``."""
        return self.interface is not None and self.interface.type is kind

    @property
    def is_expensive(self) -> bool:
        """Whether the interface in use is expensive."""
        return self.interface is not None and self.interface.is_expensive

    @property
    def is_constrained(self) -> bool:
        """Whether the interface in use is constrained."""
        return self.interface is not None and self.interface.is_constrained

    @property
    def supports_ipv4(self) -> bool:
        """Whether the path's interface (a monitor's: any available one) has an IPv4 address."""
        return self._supports(socket.AF_INET)

    @property
    def supports_ipv6(self) -> bool:
        """Whether the path's interface (a monitor's: any) has a non-link-local IPv6 address."""
        return self._supports(socket.AF_INET6)

    def _supports(self, family: socket.AddressFamily) -> bool:
        if self.status is not PathStatus.SATISFIED:
            return False
        version = 6 if family == socket.AF_INET6 else 4
        if self.local is not None and _bare(self.local.host).version == version:
            return True
        interfaces = (self.interface,) if self.interface is not None else self.available_interfaces
        return any(
            ipaddress.ip_address(a).version == version and not ipaddress.ip_address(a).is_link_local
            for i in interfaces
            for a in i.addresses
        )

    def describe(self) -> str:
        """One line for people, e.g. ``satisfied eth0[wired] 10.0.0.2:5000 -> 10.0.0.1:443``."""
        parts = [self.status.value]
        if self.unsatisfied_reason:
            parts.append(f"({self.unsatisfied_reason})")
        parts.append(str(self.interface) if self.interface else "no interface")
        if self.local is not None or self.remote is not None:
            parts.append(f"{self.local} -> {self.remote}")
        flags = [
            name
            for name, on in (
                ("ipv4", self.supports_ipv4),
                ("ipv6", self.supports_ipv6),
                ("dns", self.supports_dns),
                ("expensive", self.is_expensive),
                ("constrained", self.is_constrained),
            )
            if on
        ]
        return " ".join(parts + flags)


@functools.lru_cache(maxsize=1024)
def _bare(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address without scope; IPv4-mapped IPv6 addresses become IPv4.

    Cached: every new connection's path asks about the same few addresses.
    """
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=1024)
def _network(destination: str, prefix_length: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A route's destination as a network (cached: routes change rarely)."""
    return ipaddress.ip_network(f"{destination}/{prefix_length}", strict=False)


# Classification

_ARPHRD_ETHER = 1
_ARPHRD_NONE = 65534
_ARPHRD_RAWIP = 519
_VIRTUAL_ETHER_KINDS = frozenset({"dummy", "ifb", "tun", "vxlan", "geneve", "wireguard", "ipvlan"})


def _sysfs(name: str, index: int) -> str | None:
    """``/sys/class/net/<name>`` if it is this very link (sysfs may show another namespace)."""
    base = f"/sys/class/net/{name}"
    try:
        with open(f"{base}/ifindex") as f:
            if int(f.read().strip()) != index:
                return None
    except (OSError, ValueError):
        return None
    return base


def _classify(link: _netlink.Link) -> InterfaceType:
    if link.is_loopback:
        return InterfaceType.LOOPBACK
    base = _sysfs(link.name, link.index)
    if base is not None and (
        os.path.exists(f"{base}/wireless") or os.path.exists(f"{base}/phy80211")
    ):
        return InterfaceType.WIFI
    if link.arphrd == _ARPHRD_RAWIP or link.kind == "wwan":
        return InterfaceType.CELLULAR
    if base is not None and os.path.exists(f"{base}/qmi"):
        return InterfaceType.CELLULAR
    if link.name.startswith(("wwan", "rmnet", "ccmni")):
        return InterfaceType.CELLULAR
    if link.arphrd == _ARPHRD_ETHER and link.kind not in _VIRTUAL_ETHER_KINDS:
        return InterfaceType.WIRED  # hardware Ethernet, veth, bridges, VLANs, bonds
    return InterfaceType.OTHER


def _interface(link: _netlink.Link, addresses: tuple[str, ...]) -> Interface:
    kind = _classify(link)
    policy = _overrides.get(link.name, InterfaceProperties())
    kind = policy.type or kind
    expensive = policy.is_expensive
    constrained = policy.is_constrained
    return Interface(
        link.name,
        link.index,
        kind,
        addresses,
        is_expensive=kind is InterfaceType.CELLULAR if expensive is None else expensive,
        is_constrained=bool(constrained),
        is_up=link.is_up,
    )


# Snapshots


_RESOLV_CONF = "/etc/resolv.conf"
_nameserver_cache: tuple[tuple[int, int], tuple[str, ...]] | None = None


def _nameservers() -> tuple[str, ...]:
    """The nameservers of ``/etc/resolv.conf``, re-read only when the file changes."""
    global _nameserver_cache
    try:
        stat = os.stat(_RESOLV_CONF)
    except OSError:
        return ()
    key = (stat.st_mtime_ns, stat.st_ino)
    if _nameserver_cache is not None and _nameserver_cache[0] == key:
        return _nameserver_cache[1]
    try:
        with open(_RESOLV_CONF) as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    found = tuple(
        words[1]
        for words in (line.split() for line in lines)
        if len(words) >= 2 and words[0] == "nameserver"
    )
    _nameserver_cache = (key, found)
    return found


@dataclass(frozen=True, slots=True)
class HostNetwork:
    """One snapshot of this network namespace: interfaces and routes."""

    interfaces: tuple[Interface, ...]
    """Every interface, up or down."""
    routes: tuple[_netlink.Route, ...]
    """Every route of every table."""
    policy: int = 0
    """The :func:`policy_version` the interfaces were classified under."""

    @classmethod
    def capture(cls, sock: socket.socket | None = None) -> HostNetwork:
        """Ask the kernel now (through ``sock``: its namespace). Raises ``OSError`` on failure."""
        addresses: dict[int, list[str]] = {}
        for entry in _netlink.dump_addresses(sock):
            if entry.usable:
                addresses.setdefault(entry.index, []).append(entry.address)
        interfaces = tuple(
            _interface(link, tuple(addresses.get(link.index, ())))
            for link in _netlink.dump_links(sock)
        )
        return cls(interfaces, tuple(_netlink.dump_routes(sock)), _policy_version)

    def by_index(self, index: int) -> Interface | None:
        """The interface with kernel index ``index``."""
        return next((i for i in self.interfaces if i.index == index), None)

    def by_name(self, name: str) -> Interface | None:
        """The interface called ``name``."""
        return next((i for i in self.interfaces if i.name == name), None)

    def holding(self, host: str) -> Interface | None:
        """The interface that holds local address ``host``."""
        try:
            wanted = _bare(host)
        except ValueError:
            return None
        for interface in self.interfaces:
            if any(_bare(a) == wanted for a in interface.addresses):
                return interface
        return None

    def routes_to(self, host: str, via: Interface | None = None) -> list[_netlink.Route]:
        """Unicast and local routes that cover ``host`` (through ``via`` if given), best first."""
        try:
            target = _bare(host)
        except ValueError:
            return []
        found = []
        for route in self.routes:
            if route.type not in (1, 2) or route.oif == 0:  # RTN_UNICAST, RTN_LOCAL
                continue
            if via is not None and route.oif != via.index:
                continue
            if (route.family == socket.AF_INET6) != (target.version == 6):
                continue
            if route.destination is not None and target not in _network(
                route.destination, route.prefix_length
            ):
                continue
            found.append(route)
        found.sort(key=lambda r: (-r.prefix_length, r.priority))
        return found

    def gateways(self, interfaces: tuple[Interface, ...]) -> tuple[str, ...]:
        """Gateways of the default routes through ``interfaces``."""
        indexes = {i.index for i in interfaces}
        seen: dict[str, None] = {}
        for route in sorted(self.routes, key=lambda r: r.priority):
            if route.destination is None and route.gateway and route.oif in indexes:
                seen.setdefault(route.gateway, None)
        return tuple(seen)

    def dns_reachable(self, interfaces: tuple[Interface, ...]) -> bool:
        """Whether some nameserver in ``/etc/resolv.conf`` has a route through ``interfaces``."""
        for server in _nameservers():
            for interface in interfaces:
                if interface.is_up and self.routes_to(server, interface):
                    return True
        return False


def disallowed(interface: Interface, parameters: Parameters) -> str | None:
    """Why ``parameters`` forbid ``interface``, or ``None`` if they allow it."""
    if parameters.required_interface and interface.name != parameters.required_interface:
        return f"{interface} is not the required interface {parameters.required_interface}"
    required = parameters.required_interface_type
    if required is not None and interface.type is not required:
        return f"{interface} is not a {required.value} interface"
    if interface.type in parameters.prohibited_interface_types:
        return f"{interface} is a prohibited {interface.type.value} interface"
    return None


def allowed_interfaces(net: HostNetwork, parameters: Parameters | None) -> tuple[Interface, ...]:
    """Interfaces that are up, have an address and that ``parameters`` allow."""
    out = []
    for interface in net.interfaces:
        if not interface.is_up or not interface.addresses:
            continue
        if parameters is not None and disallowed(interface, parameters) is not None:
            continue
        out.append(interface)
    return tuple(out)


def monitor_path(net: HostNetwork, parameters: Parameters | None = None) -> Path:
    """The host's path as a monitor reports it: satisfied if an allowed interface is usable.

    Loopback counts only when the parameters ask for it by type or name.
    """
    wants_loopback = _wants_loopback(net, parameters)
    usable = tuple(
        i
        for i in allowed_interfaces(net, parameters)
        if wants_loopback or i.type is not InterfaceType.LOOPBACK
    )
    if not usable:
        return Path(
            PathStatus.UNSATISFIED,
            unsatisfied_reason=_why_none(net, parameters),
        )
    default_routes = sorted(
        (r for r in net.routes if r.destination is None and r.oif and r.type == 1),
        key=lambda r: r.priority,
    )
    indexes = {i.index: i for i in usable}
    primary = next((indexes[r.oif] for r in default_routes if r.oif in indexes), usable[0])
    return Path(
        PathStatus.SATISFIED,
        primary,
        available_interfaces=usable,
        gateways=net.gateways(usable),
        supports_dns=net.dns_reachable(usable),
    )


def _wants_loopback(net: HostNetwork, parameters: Parameters | None) -> bool:
    if parameters is None:
        return False
    if parameters.required_interface_type is InterfaceType.LOOPBACK:
        return True
    named = net.by_name(parameters.required_interface) if parameters.required_interface else None
    return named is not None and named.type is InterfaceType.LOOPBACK


def _why_none(net: HostNetwork, parameters: Parameters | None) -> str:
    candidates = [i for i in net.interfaces if i.type is not InterfaceType.LOOPBACK]
    if parameters is not None:
        if parameters.required_interface and net.by_name(parameters.required_interface) is None:
            return f"interface {parameters.required_interface} does not exist"
        candidates = [i for i in candidates if disallowed(i, parameters) is None]
        if not candidates:
            return "no interface satisfies the parameters"
    if not any(i.is_up for i in candidates):
        return "every interface is down" if candidates else "no network interface"
    return "no interface that is up has an address"


def connection_path(
    net: HostNetwork,
    local: Address | None,
    remote: Address | None,
    parameters: Parameters | None = None,
) -> Path:
    """The path of a connection from ``local`` to ``remote``, as ``net`` shows it."""
    interface = net.holding(local.host) if local is not None else None
    allowed = allowed_interfaces(net, parameters)
    if interface is None or local is None or remote is None:
        reason = "" if local is None else f"no interface holds the local address {local.host}"
        return Path(
            PathStatus.UNSATISFIED if reason else PathStatus.SATISFIED,
            interface,
            local,
            remote,
            unsatisfied_reason=reason,
            available_interfaces=allowed,
        )
    reason = ""
    if not interface.is_up:
        reason = f"{interface} is down"
    elif not net.routes_to(remote.host, interface):
        reason = f"no route to {remote.host} through {interface}"
    elif parameters is not None and (why := disallowed(interface, parameters)) is not None:
        reason = why
    return Path(
        PathStatus.UNSATISFIED if reason else PathStatus.SATISFIED,
        interface,
        local,
        remote,
        unsatisfied_reason=reason,
        available_interfaces=allowed,
        gateways=net.gateways((interface,)),
        supports_dns=net.dns_reachable(tuple(i for i in net.interfaces if i.is_up)),
    )


def _rank(interface: Interface) -> tuple[bool, bool, int]:
    order = (InterfaceType.WIRED, InterfaceType.WIFI, InterfaceType.CELLULAR, InterfaceType.OTHER)
    position = order.index(interface.type) if interface.type in order else len(order)
    return (interface.is_expensive, interface.is_constrained, position)


def better_interface(
    net: HostNetwork,
    path: Path,
    parameters: Parameters | None = None,
    *,
    route_get: Callable[[str], _netlink.Route | None] = _netlink.route_get,
) -> Interface | None:
    """An interface preferable to the one ``path`` uses, that also reaches its remote.

    Preferable means: the kernel now routes the remote through it, the
    current one is down, or it is cheaper (not expensive, not constrained,
    then wired over Wi-Fi over cellular). ``None`` if there is none.
    """
    current, remote = path.interface, path.remote
    if current is None or remote is None or current.type is InterfaceType.LOOPBACK:
        return None
    try:
        chosen = route_get(remote.host)
    except OSError:
        chosen = None
    family = 6 if _bare(remote.host).version == 6 else 4
    for candidate in allowed_interfaces(net, parameters):
        if candidate.index == current.index or candidate.type is InterfaceType.LOOPBACK:
            continue
        if not any(_bare(a).version == family for a in candidate.addresses):
            continue
        if not net.routes_to(remote.host, candidate):
            continue
        kernel_prefers = chosen is not None and chosen.oif == candidate.index
        if kernel_prefers or not current.is_up or _rank(candidate) < _rank(current):
            return candidate
    return None


def list_interfaces() -> tuple[Interface, ...]:
    """Every interface of this network namespace, with its type and usable addresses."""
    try:
        return HostNetwork.capture().interfaces
    except OSError:
        return ()


def interface_for_address(
    host: str, interfaces: tuple[Interface, ...] | None = None
) -> Interface | None:
    """The interface that holds local address ``host``, if any."""
    pool = interfaces if interfaces is not None else list_interfaces()
    return HostNetwork(pool, ()).holding(host)


def path_for(
    local: Address | None, remote: Address | None, parameters: Parameters | None = None
) -> Path:
    """The path of a connection with these endpoints, as the host sees it now.

    Raises ``OSError`` if the kernel cannot be asked.
    """
    return connection_path(HostNetwork.capture(), local, remote, parameters)
