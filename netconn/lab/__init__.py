"""A network lab in Linux network namespaces: client, router and server hosts.

::

    from netconn.lab import Lab

    with Lab() as lab:                       # needs root; tears down whatever happens
        with lab.inside(lab.server):         # sockets made here live in the server
            listener = await Listener(TCP(), port=4433).start()
        with lab.inside(lab.client):         # ... and these in the client
            async with Connection(lab.endpoint(lab.server, 4433), TCP()) as conn: ...
        lab.blackhole(lab.server.ipv6)       # faults are switched from outside
        lab.set_link(lab.client, up=False)

Topology (every namespace name is unique to the lab, so labs run in parallel)::

    client  c0 10.77.1.2/24 fd77:1::2/64 ---- r0 10.77.1.1 fd77:1::1  router
            (default routes, and the server's subnets with metric 100, via r0)
            c1 10.77.3.2/24 fd77:3::2/64 ---- r2 10.77.3.1 fd77:3::1  (add_second_link)
    server  s0 10.77.2.2/24 fd77:2::2/64 ---- r1 10.77.2.1 fd77:2::1  router

The client and server route everything through the router; faults live on
the router (its forward hook and egress qdiscs), never in a sender's own
output path, where a drop would fail ``send()`` with ``EPERM`` instead of
losing the packet. The kernel has no netem, so: rate and queue with ``tc
tbf``, random loss with nftables ``numgen``, blackholes with nftables drop
rules, NAT rebinding with ``snat ... random`` and ``conntrack -D``. Delay and
reordering need a user-space relay (see :mod:`netconn.lab.relay`).

Running code in a namespace: :meth:`Lab.inside` switches the *calling
thread* into a namespace with ``setns(2)``. Sockets keep the namespace they
were created in, so an asyncio program creates its sockets inside the block
and may use them anywhere afterwards; everything the event loop creates
while the block is open (in any task) lands in that namespace. Keep the
block around the code that opens sockets. Threads that already exist (the
default executor, where ``getaddrinfo`` runs) stay where they were, so use
IP literals or :meth:`Lab.endpoint`. Whole programs run in a namespace with
:meth:`Lab.spawn` / :meth:`Lab.run` (``ip netns exec``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from .._netns import entered
from ..endpoint import Address, Endpoint
from ..path import InterfaceType, clear_interface_configuration, configure_interface

__all__ = ["Host", "Lab", "LabEndpoint", "LabError", "Rule"]

_PREFIX = "ncl"
_counter = itertools.count(1)


class LabError(RuntimeError):
    """A lab command failed; the message has the command and its output."""


@dataclass(slots=True)
class Host:
    """One namespace of the lab."""

    role: str
    """``client``, ``router`` or ``server``."""
    netns: str
    """The network namespace's name (``ip netns``)."""
    interfaces: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Interface name -> (IPv4 address, IPv6 address) that the lab assigned."""

    @property
    def interface(self) -> str:
        """The first interface (towards the router, or the client side on the router)."""
        return next(iter(self.interfaces))

    @property
    def ipv4(self) -> str:
        """The IPv4 address of the first interface."""
        return self.interfaces[self.interface][0]

    @property
    def ipv6(self) -> str:
        """The IPv6 address of the first interface."""
        return self.interfaces[self.interface][1]


@dataclass(frozen=True, slots=True)
class Rule:
    """An nftables rule the lab added, for :meth:`Lab.remove`."""

    host: Host
    table: str
    chain: str
    handle: int


@dataclass(frozen=True, slots=True)
class LabEndpoint(Endpoint):
    """An endpoint with a lab host name, resolved from the lab's own table.

    Stands in for DNS inside the lab: ``resolve(family=...)`` returns the
    addresses of that family, optionally after a delay per family (to
    exercise Happy Eyeballs' resolution delay).
    """

    addresses: tuple[str, ...] = ()
    """The host's addresses, IPv6 first."""
    delays: tuple[tuple[int, float], ...] = ()
    """(family, seconds) pairs: how long each family's answer takes; default none."""

    @property
    def is_literal(self) -> bool:
        return False

    async def resolve(
        self, *, kind: Literal["stream", "datagram"] = "stream", family: int = 0
    ) -> list[Address]:
        import asyncio

        from ..errors import DNSError

        delay = dict(self.delays).get(family, 0.0)
        if delay:
            await asyncio.sleep(delay)
        found = [
            Address(a, self.port)
            for a in self.addresses
            if family == 0 or (socket.AF_INET6 if ":" in a else socket.AF_INET) == family
        ]
        if not found:
            raise DNSError(f"{self.host!r} has no addresses of family {family}")
        return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lab:
    """Client, router and server namespaces joined by veth pairs.

    Use as a context manager (or call :meth:`start` and :meth:`close`).
    Every method that changes the lab runs ``ip``, ``tc``, ``nft`` or
    ``conntrack`` and blocks until it finished (a few milliseconds); it
    raises :class:`LabError` if the command fails.
    """

    def __init__(self) -> None:
        self.id = f"{_PREFIX}{os.getpid()}x{next(_counter)}"
        """Unique among the labs on this machine; prefixes every namespace name."""
        self.client = Host("client", f"{self.id}c")
        self.router = Host("router", f"{self.id}r")
        self.server = Host("server", f"{self.id}s")
        self._created: list[Host] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._configured: list[str] = []
        self._nat_rule: Rule | None = None
        self._routes: list[tuple[Host, list[str]]] = []

    # Availability

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why a lab cannot be built here (not root, no ``ip``/``nft``...), or ``None``."""
        if os.geteuid() != 0:
            return "the namespace lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
        for tool in ("ip", "tc", "nft", "conntrack"):
            if shutil.which(tool) is None:
                return f"the namespace lab needs {tool!r} (./scripts/bootstrap installs it)"
        if not os.path.exists("/proc/thread-self/ns/net"):
            return "this kernel has no network namespaces"
        return None

    # Life cycle

    def start(self) -> Self:
        """Build the namespaces, links, addresses, routes and the router's nftables table.

        On failure, tears down what was built and raises :class:`LabError`.
        """
        _remove_stale_namespaces()
        try:
            for host in (self.client, self.router, self.server):
                self._cmd("ip", "netns", "add", host.netns)
                self._created.append(host)
                self._prepare(host)
            self._link(self.client, "c0", self.router, "r0", subnet=1)
            self._link(self.server, "s0", self.router, "r1", subnet=2)
            for v in ("4", "6"):
                self._sysctl(self.router, f"net.ipv{v}.conf.all.forwarding", "1")
            self._route(self.client, "default", via=self.router.interfaces["r0"], dev="c0")
            # Explicit routes to the server's subnets, so a second link can compete.
            v4, v6 = self.router.interfaces["r0"]
            self._route(self.client, "10.77.2.0/24", via=(v4, v4), dev="c0", metric=100)
            self._route(self.client, "fd77:2::/64", via=(v6, v6), dev="c0", metric=100)
            self._route(self.server, "default", via=self.router.interfaces["r1"], dev="s0")
            for host in (self.client, self.router, self.server):
                for name in host.interfaces:
                    self._wait_for_carrier(host, name)
            self.nft(
                self.router,
                "add table inet netconn_lab\n"
                "add chain inet netconn_lab forward "
                "{ type filter hook forward priority 0; policy accept; }",
            )
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop spawned processes and delete every namespace; never raises."""
        for process in self._processes:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                process.wait(timeout=5)
        self._processes.clear()
        for name in self._configured:
            clear_interface_configuration(name)
        self._configured.clear()
        for host in reversed(self._created):
            subprocess.run(
                ["ip", "netns", "del", host.netns], capture_output=True, check=False, timeout=30
            )
        self._created.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Running things in a namespace

    @contextlib.contextmanager
    def inside(self, host: Host) -> Iterator[None]:
        """Switch the calling thread into ``host``'s namespace for the block.

        Sockets (and netlink monitors) created in the block belong to
        ``host``. The thread's own namespace is restored on exit, whatever
        happens.
        """
        target = os.open(f"/run/netns/{host.netns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with entered(target):
                yield
        finally:
            os.close(target)

    def run(
        self, host: Host, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host`` (``ip netns exec``) and return its result.

        Raises :class:`LabError` if ``check`` and it exits non-zero.
        """
        return self._cmd("ip", "netns", "exec", host.netns, *argv, check=check, timeout=timeout)

    def spawn(self, host: Host, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host`` in its own process group; :meth:`close` kills it."""
        process: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, *argv], start_new_session=True, **popen
        )
        self._processes.append(process)
        return process

    def endpoint(
        self, host: Host, port: int, *, delays: dict[int, float] | None = None
    ) -> LabEndpoint:
        """An endpoint named after ``host`` that resolves to its IPv6 and IPv4 addresses."""
        return LabEndpoint(
            f"{host.role}.lab",
            port,
            addresses=(host.ipv6, host.ipv4),
            delays=tuple((delays or {}).items()),
        )

    # Links, addresses, routes

    def set_link(self, host: Host, interface: str | None = None, *, up: bool) -> None:
        """Set an interface (default: the host's first) administratively up or down.

        Bringing it up restores the routes the lab had added through it (the
        kernel drops them when the link goes down).
        """
        name = interface or host.interface
        self._cmd("ip", "-n", host.netns, "link", "set", name, "up" if up else "down")
        if up:
            self._wait_for_carrier(host, name)
            for route_host, argv in self._routes:
                if route_host is host and name in argv:
                    self._cmd("ip", "-n", host.netns, *argv)

    def add_address(self, host: Host, cidr: str, interface: str | None = None) -> None:
        """Add ``cidr`` (e.g. ``10.77.1.9/24``) to an interface of ``host``."""
        family = "-6" if ":" in cidr else "-4"
        extra = ["nodad"] if ":" in cidr else []
        name = interface or host.interface
        self._cmd("ip", "-n", host.netns, family, "addr", "add", cidr, "dev", name, *extra)

    def remove_address(self, host: Host, cidr: str, interface: str | None = None) -> None:
        """Remove ``cidr`` from an interface of ``host``."""
        family = "-6" if ":" in cidr else "-4"
        name = interface or host.interface
        self._cmd("ip", "-n", host.netns, family, "addr", "del", cidr, "dev", name)

    def add_route(
        self, host: Host, destination: str, *, via: str, dev: str, metric: int | None = None
    ) -> None:
        """Add (or replace) a route in ``host``; :meth:`set_link` restores it after a flap."""
        self._route(host, destination, via=(via, via), dev=dev, metric=metric)

    def delete_route(
        self, host: Host, destination: str, *, dev: str, metric: int | None = None
    ) -> None:
        """Delete a route from ``host``."""
        family = "-6" if ":" in destination else "-4"
        argv = [family, "route", "del", destination, "dev", dev]
        if metric is not None:
            argv += ["metric", str(metric)]
        self._cmd("ip", "-n", host.netns, *argv)
        self._routes = [
            (h, a) for h, a in self._routes if not (h is host and destination in a and dev in a)
        ]

    def add_second_link(self, *, route_metric: int | None = None) -> str:
        """A second client link (``c1`` -- ``r2``, subnet 3); returns the client's interface name.

        With ``route_metric``, also routes the server's subnets through it
        with that metric: below 100 the kernel prefers it to the first link.
        """
        self._link(self.client, "c1", self.router, "r2", subnet=3)
        self._wait_for_carrier(self.client, "c1")
        if route_metric is not None:
            self.route_server_via_second_link(route_metric)
        return "c1"

    def route_server_via_second_link(self, metric: int) -> None:
        """Route the server's subnets from the client through ``c1`` with ``metric``."""
        v4, v6 = self.router.interfaces["r2"]
        self._route(self.client, "10.77.2.0/24", via=(v4, v4), dev="c1", metric=metric)
        self._route(self.client, "fd77:2::/64", via=(v6, v6), dev="c1", metric=metric)

    def configure_interface(
        self,
        interface: str,
        *,
        type: InterfaceType | None = None,
        expensive: bool | None = None,
        constrained: bool | None = None,
    ) -> None:
        """:func:`netconn.path.configure_interface` for a lab interface, undone at close."""
        configure_interface(interface, type=type, expensive=expensive, constrained=constrained)
        self._configured.append(interface)

    # Faults (on the router)

    def rate_limit(
        self,
        host: Host,
        interface: str,
        rate: str = "10mbit",
        *,
        burst: str = "16kb",
        latency: str = "50ms",
    ) -> None:
        """Shape ``interface``'s egress with a token bucket (``tc tbf``); replaces any before."""
        self._cmd(
            "ip", "netns", "exec", host.netns, "tc", "qdisc", "replace", "dev", interface,
            "root", "tbf", "rate", rate, "burst", burst, "latency", latency,
        )  # fmt: skip

    def clear_rate_limit(self, host: Host, interface: str) -> None:
        """Remove the qdisc :meth:`rate_limit` set."""
        self._cmd("ip", "netns", "exec", host.netns, "tc", "qdisc", "del", "dev", interface, "root")

    def drop(self, match: str) -> Rule:
        """Drop forwarded packets matching the nftables expression ``match``; returns the rule."""
        return self._add_rule(self.router, "inet netconn_lab", "forward", f"{match} counter drop")

    def blackhole(self, address: str) -> Rule:
        """Silently drop every forwarded packet to ``address`` until :meth:`remove`."""
        family = "ip6" if ":" in address else "ip"
        return self.drop(f"{family} daddr {address}")

    def loss(self, per_mille: int) -> Rule:
        """Drop ``per_mille`` of every 1000 forwarded packets at random (both directions)."""
        if not 0 <= per_mille <= 1000:
            raise ValueError("per_mille must be within 0..1000")
        return self.drop(f"numgen random mod 1000 < {per_mille}")

    def remove(self, rule: Rule) -> None:
        """Delete a rule that :meth:`drop`, :meth:`blackhole`, :meth:`loss` or NAT added."""
        self.nft(rule.host, f"delete rule {rule.table} {rule.chain} handle {rule.handle}")

    def enable_nat(self) -> None:
        """Source-NAT the client's IPv4 traffic to the router's server-side address.

        Ports are mapped at random, so every :meth:`rebind` gives a new one.
        """
        self.nft(
            self.router,
            "add table ip netconn_nat\n"
            "add chain ip netconn_nat post { type nat hook postrouting priority 100; }",
        )
        self._set_nat_address(self.router.interfaces["r1"][0])

    def rebind(self, *, new_address: str | None = None) -> None:
        """Forget the router's NAT mappings: the client's next packet gets a new source port.

        With ``new_address`` (an IPv4 address in 10.77.2.0/24), the router
        also takes that address and maps to it: the server sees a new source
        address too.
        """
        if self._nat_rule is None:
            raise LabError("rebind() needs enable_nat() first")
        if new_address is not None:
            self.add_address(self.router, f"{new_address}/24", "r1")
            self.remove(self._nat_rule)
            self._set_nat_address(new_address)
        result = self.run(self.router, "conntrack", "-D", "-s", self.client.ipv4, check=False)
        if result.returncode not in (0, 1):  # 1: nothing to delete
            raise LabError(f"conntrack -D failed: {result.stderr.strip()}")

    def _set_nat_address(self, address: str) -> None:
        self._nat_rule = self._add_rule(
            self.router,
            "ip netconn_nat",
            "post",
            f'oifname "r1" ip saddr 10.77.0.0/16 snat to {address} random',
        )

    # Plumbing

    def nft(self, host: Host, script: str) -> str:
        """Run an nftables script in ``host``; returns what ``nft -e -a`` echoed."""
        result = self._cmd(
            "ip", "netns", "exec", host.netns, "nft", "-e", "-a", "-f", "-", input=script
        )
        return result.stdout

    def _add_rule(self, host: Host, table: str, chain: str, rule: str) -> Rule:
        echoed = self.nft(host, f"add rule {table} {chain} {rule}")
        for line in echoed.splitlines():
            if "# handle " in line:
                return Rule(host, table, chain, int(line.rsplit("# handle ", 1)[1].split()[0]))
        raise LabError(f"nft did not report a handle for {rule!r}: {echoed!r}")

    def _prepare(self, host: Host) -> None:
        self._cmd("ip", "-n", host.netns, "link", "set", "lo", "up")
        for key, value in (
            ("net.ipv6.conf.all.keep_addr_on_down", "1"),  # keep addresses across a link flap
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
        ):
            self._sysctl(host, key, value)

    def _wait_for_carrier(self, host: Host, name: str, seconds: float = 5.0) -> None:
        """Wait until the kernel reports the link's carrier (it does so up to 1 s late)."""
        deadline = time.monotonic() + seconds
        while True:
            shown = self._cmd("ip", "-n", host.netns, "-o", "link", "show", "dev", name).stdout
            if "LOWER_UP" in shown and "state UP" in shown:
                return
            if time.monotonic() > deadline:
                raise LabError(f"{name} in {host.role} has no carrier: {shown.strip()}")
            time.sleep(0.02)

    def _sysctl(self, host: Host, key: str, value: str) -> None:
        # /proc/sys/net shows the namespace of the thread that opens it.
        with self.inside(host), open(f"/proc/sys/{key.replace('.', '/')}", "w") as f:
            f.write(value)

    def _link(self, a: Host, a_name: str, b: Host, b_name: str, *, subnet: int) -> None:
        self._cmd(
            "ip", "link", "add", a_name, "netns", a.netns, "type", "veth",
            "peer", "name", b_name, "netns", b.netns,
        )  # fmt: skip
        for host, name, last in ((a, a_name, 2), (b, b_name, 1)):
            v4, v6 = f"10.77.{subnet}.{last}", f"fd77:{subnet}::{last}"
            self._cmd("ip", "-n", host.netns, "addr", "add", f"{v4}/24", "dev", name)
            self._cmd("ip", "-n", host.netns, "-6", "addr", "add", f"{v6}/64", "dev", name, "nodad")
            self._cmd("ip", "-n", host.netns, "link", "set", name, "up")
            host.interfaces[name] = (v4, v6)

    def _route(
        self,
        host: Host,
        destination: str,
        *,
        via: tuple[str, str],
        dev: str,
        metric: int | None = None,
    ) -> None:
        destinations = [destination] if destination != "default" else ["default", "default"]
        for i, target in enumerate(destinations):
            if destination == "default":
                family, gateway = ("-4", via[0]) if i == 0 else ("-6", via[1])
            else:
                family = "-6" if ":" in target else "-4"
                gateway = via[1] if family == "-6" else via[0]
            argv = [family, "route", "replace", target, "via", gateway, "dev", dev]
            if metric is not None:
                argv += ["metric", str(metric)]
            self._cmd("ip", "-n", host.netns, *argv)
            self._routes.append((host, argv))

    def _cmd(
        self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, input=input, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise LabError(f"{' '.join(argv)}: {(result.stderr or result.stdout).strip()}")
        return result


def _remove_stale_namespaces() -> None:
    """Delete namespaces left by labs whose process died without tearing down."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for name in names:
        match = re.fullmatch(rf"{_PREFIX}(\d+)x\d+[crs]", name)
        if match is not None and not _pid_alive(int(match.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
