"""Socket set-up shared by the transports: parameters, path checks, listening sockets."""

from __future__ import annotations

import contextlib
import socket

from ..endpoint import Address
from ..errors import NoSatisfyingPath, mapped
from ..parameters import Parameters
from ..path import Interface, interface_for_address, list_interfaces

__all__ = ["apply_parameters", "bind_listening_sockets", "check_path", "route_interface"]

_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def apply_parameters(sock: socket.socket, params: Parameters, family: int) -> None:
    """Bind device, local endpoint and traffic class as ``params`` ask."""
    if params.required_interface:
        sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, params.required_interface.encode())
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


def check_path(address: Address, params: Parameters) -> None:
    """Raise :class:`NoSatisfyingPath` if the route to ``address`` breaks the parameters."""
    if params.required_interface_type is None and not params.prohibited_interface_types:
        return
    with mapped(f"route to {address}"):
        interface = route_interface(address, params)
    if interface is None:
        raise NoSatisfyingPath(f"no interface found for the route to {address}")
    if params.required_interface_type not in (None, interface.type):
        raise NoSatisfyingPath(
            f"the route to {address} uses {interface.name} ({interface.type.value}), "
            f"not a {params.required_interface_type.value} interface"
        )
    if interface.type in params.prohibited_interface_types:
        raise NoSatisfyingPath(
            f"the route to {address} uses {interface.name} ({interface.type.value}), "
            "a prohibited interface type"
        )


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
