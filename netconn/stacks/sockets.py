"""Socket set-up shared by the transports: parameters, path checks, listening sockets."""

from __future__ import annotations

import contextlib
import socket

from .. import _netlink
from ..endpoint import Address
from ..errors import NoSatisfyingPath, mapped
from ..parameters import Parameters
from ..path import (
    HostNetwork,
    Interface,
    allowed_interfaces,
    disallowed,
    interface_for_address,
    list_interfaces,
)

__all__ = ["apply_parameters", "bind_listening_sockets", "check_path", "route_interface"]

_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def apply_parameters(
    sock: socket.socket, params: Parameters, family: int, device: str | None = None
) -> None:
    """Bind device, local endpoint and traffic class as ``params`` ask.

    ``device`` (what :func:`check_path` chose) overrides ``required_interface``.
    """
    device = device or params.required_interface
    if device:
        sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, device.encode())
    tos = params.service_class.tos
    if tos:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    if params.local_endpoint is not None:
        local = params.local_endpoint
        host = local.host
        if family == socket.AF_INET6 and ":" not in host and host not in ("", "0.0.0.0"):
            host = "::ffff:" + host
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, local.port))


def route_interface(address: Address, params: Parameters) -> Interface | None:
    """The interface the kernel would route ``address`` through, sending nothing.

    A connected UDP socket makes the kernel pick the route and source address.
    """
    with socket.socket(address.family, socket.SOCK_DGRAM) as probe:
        if params.required_interface:
            probe.setsockopt(
                socket.SOL_SOCKET, _SO_BINDTODEVICE, params.required_interface.encode()
            )
        probe.connect(address.sockaddr)
        local = Address.from_sockaddr(probe.getsockname())
    return interface_for_address(local.host, list_interfaces())


def check_path(
    address: Address, params: Parameters, *, will_bind: bool = False
) -> Interface | None:
    """The interface that reaches ``address`` as ``params`` allow (``None``: no constraint).

    With no interface constraint this asks nothing and returns ``None``.
    When the kernel's route uses an interface the parameters exclude and the
    caller ``will_bind`` its socket to the returned interface (pass its name
    to :func:`apply_parameters`), another allowed interface with a route to
    ``address`` is chosen. Raises :class:`NoSatisfyingPath` (retryable: the
    connection waits for a path to appear) when none will do.
    """
    if (
        params.required_interface is None
        and params.required_interface_type is None
        and not params.prohibited_interface_types
    ):
        return None
    with mapped(f"route to {address}"):
        net = HostNetwork.capture()
        chosen = _netlink.route_get(address.host)
    if params.required_interface:
        interface = net.by_name(params.required_interface)
        if interface is None:
            raise NoSatisfyingPath(f"interface {params.required_interface} does not exist")
        if not interface.is_up:
            raise NoSatisfyingPath(f"the required interface {interface} is down")
    else:
        interface = net.by_index(chosen.oif) if chosen is not None else None
        if will_bind and interface is not None and disallowed(interface, params) is not None:
            # Prefer an allowed interface that also reaches the address.
            interface = next(
                (i for i in allowed_interfaces(net, params) if net.routes_to(address.host, i)),
                interface,
            )
    if interface is None:
        raise NoSatisfyingPath(f"no route to {address}")
    why = disallowed(interface, params)
    if why is not None:
        raise NoSatisfyingPath(f"the route to {address} needs {interface}, but {why}")
    if not net.routes_to(address.host, interface):
        raise NoSatisfyingPath(f"no route to {address} through {interface}")
    return interface


def bind_listening_sockets(
    host: str | None, port: int, socktype: int, params: Parameters
) -> list[socket.socket]:
    """Bound, non-blocking sockets for a listener on ``host`` (all addresses if ``None``)."""
    if host is None or host in ("", "::"):
        # One dual-stack socket serves IPv4 and IPv6.
        candidates = [(socket.AF_INET6, "::", False)]
    elif host in ("0.0.0.0",):
        candidates = [(socket.AF_INET, host, True)]
    else:
        candidates = [
            (info[0], str(info[4][0]), True)
            for info in socket.getaddrinfo(host, port, type=socktype, flags=socket.AI_PASSIVE)
        ]
    sockets: list[socket.socket] = []
    try:
        for family, address, v6only in candidates:
            with mapped(f"listen on {address}:{port}"):
                sock = socket.socket(family, socktype)
                sockets.append(sock)
                sock.setblocking(False)
                if params.reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
                apply_parameters(sock, _without_local(params), family)
                sock.bind((address, port))
                # Every further address of the name shares the first port we got.
                port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _without_local(params: Parameters) -> Parameters:
    from dataclasses import replace

    return replace(params, local_endpoint=None)
