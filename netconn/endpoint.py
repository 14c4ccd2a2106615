"""Endpoints: where a connection goes, and the addresses a name resolves to."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from dataclasses import dataclass
from typing import Literal

from .errors import DNSError

__all__ = ["Address", "Endpoint"]


@functools.lru_cache(maxsize=1024)
def _is_ip_literal(host: str) -> bool:
    # Cached: parsing with ipaddress costs tens of microseconds, and a client
    # connects to the same few hosts again and again.
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Address:
    """One resolved socket address: an IP literal and a port."""

    host: str
    """The IP address as text; IPv6 without brackets and with any ``%scope``."""
    port: int
    """The port number."""

    @property
    def family(self) -> socket.AddressFamily:
        """``AF_INET6`` for IPv6 addresses, else ``AF_INET``."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def sockaddr(self) -> tuple[str, int]:
        """The tuple that socket calls take."""
        return (self.host, self.port)

    @classmethod
    def from_sockaddr(cls, sockaddr: tuple[object, ...]) -> Address:
        """Build from what ``getsockname`` / ``getpeername`` return."""
        host, port = sockaddr[0], sockaddr[1]
        if type(host) is str and type(port) is int:  # what the socket module gives
            # The slots set directly: the frozen dataclass's __init__ goes
            # through object.__setattr__, which costs more than the rest.
            address = _new(cls)
            _set_host(address, host)
            _set_port(address, port)
            return address
        return cls(str(host), int(port))  # type: ignore[call-overload]

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_new = object.__new__
_set_host = Address.__dict__["host"].__set__
_set_port = Address.__dict__["port"].__set__


@functools.lru_cache(maxsize=1024)
def literal_address(host: str, port: int) -> Address | None:
    """The one address of an IP literal endpoint (``None`` for a name).

    Cached: the same object each time, instead of a frozen dataclass (and the
    literal check) per connection. Addresses are immutable, so sharing is safe.
    """
    return Address(host, port) if _is_ip_literal(host) else None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host (DNS name or IP literal) and a port.

    Build one with :meth:`host_port`. Resolution happens when a connection
    starts, asynchronously, and yields every address the name has.
    """

    host: str
    """DNS name, IPv4 literal or IPv6 literal (brackets allowed)."""
    port: int
    """Port number, 0 to 65535."""

    @classmethod
    def host_port(cls, host: str, port: int) -> Endpoint:
        """An endpoint for ``host`` (name, IPv4 or IPv6 literal) and ``port``."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0..65535")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise ValueError("host must not be empty")
        return cls(host, port)

    @property
    def is_literal(self) -> bool:
        """Whether the host is an IP address rather than a name."""
        return _is_ip_literal(self.host)

    async def resolve(
        self, *, kind: Literal["stream", "datagram"] = "stream", family: int = 0
    ) -> list[Address]:
        """Every address of this endpoint, in the resolver's order, without duplicates.

        Raises :class:`DNSError` (``retryable`` for temporary failures).
        """
        if self.is_literal:
            return [Address(self.host, self.port)]
        socktype = socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, family=family, type=socktype)
        except socket.gaierror as exc:
            temporary = exc.errno == socket.EAI_AGAIN
            raise DNSError(
                f"cannot resolve {self.host!r}: {exc.strerror}", retryable=temporary
            ) from exc
        except UnicodeError as exc:  # the IDNA codec rejects e.g. empty or long labels
            raise DNSError(f"cannot resolve {self.host!r}: not a valid host name") from exc
        seen: dict[Address, None] = {}
        for _family, _type, _proto, _canon, sockaddr in infos:
            seen.setdefault(Address.from_sockaddr(sockaddr), None)
        if not seen:
            raise DNSError(f"{self.host!r} has no addresses")
        return list(seen)

    def __str__(self) -> str:
        return (
            str(Address(self.host, self.port)) if ":" in self.host else f"{self.host}:{self.port}"
        )
