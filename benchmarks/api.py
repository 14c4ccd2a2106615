"""What every benchmarked implementation provides, and the knobs a run sets.

A workload (bulk, echo, handshake...) is written once against the small
:class:`Session` / :class:`Stream` interface below; each implementation
(netconn, asyncio streams, the ``websockets`` library, raw aioquic, qh3)
adapts its own API to it in the most direct way that library offers. The
adapters are a thin, equal layer on both sides of every comparison.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "ConnectOptions",
    "DatagramHandler",
    "Datagrams",
    "Env",
    "Implementation",
    "Session",
    "Stream",
    "StreamHandler",
    "Unavailable",
    "Unsupported",
    "peak_rss",
    "reset_peak_rss",
    "rss",
]


class Unavailable(Exception):
    """The implementation cannot run in this build (a module is missing)."""


class Unsupported(Exception):
    """The implementation has no API for this workload (e.g. TLS resumption in asyncio)."""


@dataclass(frozen=True, slots=True)
class Env:
    """What a server or client process needs to know: certificates and the event loop."""

    ca: str
    """PEM file of the CA clients trust."""
    cert: str
    """PEM file of the server's certificate chain."""
    key: str
    """PEM file of the server's private key."""
    loop: str = "asyncio"
    """``"asyncio"`` (the default loop) or ``"uvloop"``."""
    datagram_frames: bool = False
    """QUIC: enable DATAGRAM frames (RFC 9221) on both sides."""


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """How a client connects."""

    resume: bool = False
    """Resume a session (TLS session / QUIC ticket) kept from an earlier connection."""
    early_data: bool = False
    """QUIC: send the first request as 0-RTT data."""


class Stream(Protocol):
    """One ordered byte stream (or, on message stacks, one message per call)."""

    async def send(self, data: bytes, end: bool = False) -> None:
        """Send ``data`` (``end``: finish the sending direction after it)."""

    async def recv(self, at_most: int) -> bytes:
        """Between 1 and ``at_most`` bytes, or one message; ``b""`` at the end."""

    async def recv_exactly(self, size: int) -> bytes:
        """Exactly ``size`` bytes; raise ``EOFError`` if the stream ends first."""


class Datagrams(Protocol):
    """Unreliable datagrams (UDP, QUIC DATAGRAM frames)."""

    async def send(self, data: bytes) -> None:
        """Send one datagram (waiting only if the implementation has back-pressure)."""

    async def recv(self) -> bytes:
        """The next datagram."""


class Session(Protocol):
    """One client connection."""

    async def stream(self) -> Stream:
        """A stream: the connection itself on single-stream stacks, a new stream on QUIC."""

    def datagrams(self) -> Datagrams:
        """The connection's datagrams; raises :class:`Unsupported` where there are none."""

    @property
    def resumed(self) -> bool:
        """Whether the handshake resumed an earlier session."""

    async def close(self) -> None:
        """Close gracefully and wait for it."""


StreamHandler = Callable[[Stream], Awaitable[None]]
"""Server side: called once per inbound stream (per connection on single-stream stacks)."""
DatagramHandler = Callable[[bytes], bytes | None]
"""Server side: called per datagram; a returned value is sent back to the sender."""


class Implementation(Protocol):
    """One library's way of serving and connecting on one stack."""

    name: str
    """Short name shown in reports, e.g. ``"netconn"``, ``"asyncio"``."""

    def check(self) -> None:
        """Raise :class:`Unavailable` if this build cannot run it."""

    def serve(
        self, env: Env, on_stream: StreamHandler, on_datagram: DatagramHandler
    ) -> AbstractAsyncContextManager[int]:
        """Listen on 127.0.0.1; the context yields the port."""

    async def connect(self, env: Env, port: int, options: ConnectOptions) -> Session:
        """Connect to 127.0.0.1:``port`` and return once the connection is ready."""


@dataclass(slots=True)
class _Peak:
    resettable: bool = field(default=True)


_peak = _Peak()


def _status_kib(name: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{name}:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def rss() -> int:
    """This process's resident set size, in bytes."""
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """This process's peak resident set size since the last reset, in bytes."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Reset the peak to the current RSS (Linux ``clear_refs``); False if not allowed."""
    if not _peak.resettable:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        _peak.resettable = False
    return _peak.resettable
