"""The errors netconn raises.

Every error that leaves the public API is a :class:`NetconnError`. The cause
(an ``OSError``, an ``ssl.SSLError``, an aioquic or websockets exception) is
kept in ``__cause__`` for debugging but never escapes on its own::

    NetconnError
    ├── ConnectError                 establishing failed
    │   ├── DNSError                 the name did not resolve
    │   ├── ConnectionRefused        nobody listens at the address
    │   ├── HostUnreachable          no route to the host or network
    │   ├── NoSatisfyingPath         the parameters exclude every interface
    │   └── HandshakeRejected        the server answered the upgrade with an HTTP error
    ├── TLSError                     the TLS handshake or record layer failed
    │   └── CertificateError         the peer's certificate was rejected
    ├── ProtocolError                the peer broke the protocol's rules
    │   └── DecodeError              a message's payload does not decode to its type
    ├── MessageTooLarge              a message exceeds the stack's limit
    ├── ConnectionTimeout            a deadline passed (``TimeoutError`` too)
    ├── ConnectionClosed             the peer closed or reset the connection
    │   ├── EndOfStream              ... before the bytes asked for arrived
    │   └── ApplicationClosed        ... with an application code and reason
    ├── StreamReset                  a QUIC stream was reset or stopped
    ├── InvalidState                 the call does not fit the connection's state
    └── Busy                         another task already uses this direction

``retryable`` tells whether the failure may go away on its own (a refused
port, a missing route, a DNS server that timed out): those move a connection
to ``Waiting``; the others move it to ``Failed``.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .state import State

__all__ = [
    "ApplicationClosed",
    "Busy",
    "CertificateError",
    "ConnectError",
    "ConnectionClosed",
    "ConnectionRefused",
    "ConnectionTimeout",
    "DNSError",
    "DecodeError",
    "EndOfStream",
    "HandshakeRejected",
    "HostUnreachable",
    "InvalidState",
    "MessageTooLarge",
    "NetconnError",
    "NoSatisfyingPath",
    "ProtocolError",
    "StreamReset",
    "TLSError",
]


class NetconnError(Exception):
    """Base of every error netconn raises."""

    retryable: bool = False


class ConnectError(NetconnError):
    """Establishing the connection failed."""


class DNSError(ConnectError):
    """The host name did not resolve.

    ``retryable`` is true for temporary failures (``EAI_AGAIN``).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ConnectionRefused(ConnectError):
    """The peer answered that nothing listens there (TCP RST, ICMP port unreachable)."""

    retryable = True


class HostUnreachable(ConnectError):
    """No route to the host or its network, or the attempt timed out."""

    retryable = True


class NoSatisfyingPath(ConnectError):
    """No interface satisfies the connection's parameters."""

    retryable = True


class HandshakeRejected(ConnectError):
    """The server answered the WebSocket upgrade with an HTTP status other than 101.

    ``status`` is the HTTP status code (e.g. 403), ``headers`` the response's
    header lines in order, ``body`` its body (at most what the server sent).
    """

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> None:
        super().__init__(f"WebSocket handshake rejected: HTTP {status} {reason}".rstrip())
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class TLSError(NetconnError):
    """The TLS handshake or record layer failed."""


class CertificateError(TLSError):
    """The peer's certificate was rejected.

    ``reason`` is OpenSSL's verification message, for example
    ``"certificate has expired"`` or ``"Hostname mismatch, certificate is not
    valid for 'example.com'."``.
    """

    def __init__(self, reason: str, *, code: int | None = None) -> None:
        super().__init__(f"certificate rejected: {reason}")
        self.reason = reason
        self.code = code


class ProtocolError(NetconnError):
    """The peer broke the protocol's rules, or sent what cannot be decoded."""


class DecodeError(ProtocolError):
    """A received message does not decode to the expected type.

    ``payload`` holds the message's bytes (the first 1 KiB of them). The
    connection stays usable: the next message is independent of this one.
    """

    def __init__(self, message: str, payload: bytes = b"") -> None:
        super().__init__(message)
        self.payload = payload[:1024]


class MessageTooLarge(NetconnError):
    """A message is larger than the stack allows."""

    def __init__(self, size: int, maximum: int, what: str = "message") -> None:
        super().__init__(f"{what} of {size} bytes exceeds the maximum of {maximum} bytes")
        self.size = size
        self.maximum = maximum


class ConnectionTimeout(NetconnError, TimeoutError):
    """A deadline passed: establishment, idle timeout, or a keepalive went unanswered."""

    retryable = True


class ConnectionClosed(NetconnError):
    """The peer closed or reset the connection."""


class EndOfStream(ConnectionClosed):
    """The stream ended before the requested bytes arrived; ``partial`` holds what did."""

    def __init__(self, partial: bytes, expected: int) -> None:
        super().__init__(f"the stream ended after {len(partial)} of {expected} bytes")
        self.partial = partial
        self.expected = expected


class ApplicationClosed(ConnectionClosed):
    """The connection was closed with an application error code and reason.

    ``by_peer`` tells which side closed it.
    """

    def __init__(self, code: int, reason: str = "", *, by_peer: bool = True) -> None:
        who = "peer" if by_peer else "local application"
        super().__init__(f"closed by {who} with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


class StreamReset(NetconnError):
    """A stream direction was aborted with an application error code.

    ``by_peer`` is true for a RESET_STREAM or STOP_SENDING from the peer.
    """

    def __init__(self, code: int, *, by_peer: bool = True, what: str = "reset") -> None:
        who = "peer" if by_peer else "local side"
        super().__init__(f"stream {what} by {who} with code {code}")
        self.code = code
        self.by_peer = by_peer


class InvalidState(NetconnError):
    """The call does not fit the connection's current state."""

    def __init__(self, message: str, state: State | None = None) -> None:
        super().__init__(message)
        self.state = state


class Busy(NetconnError):
    """Another task is already sending (or receiving) on this connection."""


_REFUSED = {errno.ECONNREFUSED}
_UNREACHABLE = {
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EHOSTDOWN,
    errno.EADDRNOTAVAIL,
    errno.ETIMEDOUT,
}
_CLOSED = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN}

_CERT_REASONS = {
    # OpenSSL verify codes to short, stable words a program can match on.
    10: "expired",
    9: "not yet valid",
    18: "self-signed",
    19: "untrusted",
    20: "untrusted",
    21: "untrusted",
    62: "hostname mismatch",
    64: "ip address mismatch",
}


def certificate_problem(error: CertificateError) -> str:
    """One word for what was wrong with a rejected certificate."""
    if error.code is not None and error.code in _CERT_REASONS:
        return _CERT_REASONS[error.code]
    return "rejected"


def map_os_error(exc: OSError, what: str = "") -> NetconnError:
    """Turn an ``OSError`` from a socket call into the matching netconn error."""
    prefix = f"{what}: " if what else ""
    text = f"{prefix}{exc.strerror or exc}"
    if isinstance(exc, ssl.SSLError):
        return map_ssl_error(exc)
    if isinstance(exc, socket.gaierror):
        temporary = exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", -11))
        return DNSError(f"{prefix}{exc.strerror}", retryable=temporary)
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return ConnectionTimeout(f"{prefix}timed out")
    if exc.errno in _REFUSED:
        return ConnectionRefused(text)
    if exc.errno in _UNREACHABLE:
        return HostUnreachable(text)
    if exc.errno in _CLOSED:
        return ConnectionClosed(text)
    return NetconnError(text)


def map_ssl_error(exc: ssl.SSLError) -> TLSError:
    """Turn an ``ssl.SSLError`` into :class:`TLSError` or :class:`CertificateError`."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = getattr(exc, "verify_message", None) or str(exc)
        return CertificateError(message, code=getattr(exc, "verify_code", None))
    reason = getattr(exc, "reason", None) or str(exc)  # only OpenSSL sets .reason
    return TLSError(f"TLS failed: {reason}")


@contextmanager
def mapped(what: str = "") -> Iterator[None]:
    """Re-raise any ``OSError`` inside the block as a :class:`NetconnError`."""
    try:
        yield
    except NetconnError:
        raise
    except OSError as exc:
        raise map_os_error(exc, what) from exc
