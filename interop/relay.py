"""A UDP relay on loopback that injects the QUIC Interop Runner's network faults.

The kernel here has no netem (see the project's lab notes), and a relay in
the same process needs no root and no namespaces: the client talks to the
relay's port, the relay talks to the server. It drops, corrupts and delays
datagrams, blacks out both directions for a while, and rebinds its
server-facing socket to a new port (or a new loopback address) so the server
sees the client move, like a NAT rebinding. It counts what it did, which is
part of each case's evidence.

One client at a time: the relay answers the last client address it heard from.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from dataclasses import dataclass, field

from .amplification import packet_types

__all__ = ["TRACE_LIMIT", "Faults", "Relay", "RelayStats"]

TRACE_LIMIT = 256
"""Most datagrams :attr:`RelayStats.pre_validation` keeps (a handshake needs a few dozen)."""


@dataclass(frozen=True)
class Faults:
    """What the relay does to traffic; the default passes everything through."""

    loss: float = 0.0
    """Probability that a datagram (either way) is dropped; default 0."""
    max_drops_in_a_row: int = 3
    """Never drop more than this many datagrams in a row in one direction; default 3."""
    corruption: float = 0.0
    """Probability that one byte among a datagram's first 50 is changed; default 0."""
    delay: float = 0.0
    """Seconds added in each direction; default 0."""
    blackhole_after: int | None = None
    """Server-to-client datagrams before both directions are blocked; default never."""
    blackhole_for: float = 2.0
    """Seconds the blackhole lasts; default 2."""
    rebind_every: int | None = None
    """Client-to-server datagrams between rebinds of the server-facing socket; default never."""
    max_rebinds: int = 3
    """Stop rebinding after this many moves (each new path spends a connection ID); default 3."""
    rebind_address: bool = False
    """Rebind to a new loopback address (127.0.0.x) rather than only a new port; default false."""
    drop_client_datagrams: frozenset[int] = frozenset()
    """Client datagram numbers (1 = the first) to drop; default none."""
    seed: int = 1
    """Seed of the relay's random choices, so a run can be repeated; default 1."""


@dataclass
class RelayStats:
    """What the relay saw and did."""

    to_server: int = 0
    """Datagrams from the client forwarded to the server."""
    to_client: int = 0
    """Datagrams from the server forwarded to the client."""
    dropped: int = 0
    """Datagrams dropped (loss, blackhole, or by number)."""
    corrupted: int = 0
    """Datagrams with one byte changed."""
    rebinds: int = 0
    """Times the server-facing socket moved."""
    source_addresses: set[tuple[str, int]] = field(default_factory=set)
    """Every (address, port) the server was sent datagrams from."""
    pre_validation: list[tuple[bool, bytes | int]] = field(default_factory=list)
    """``(from_client, datagram)`` in forwarding order (server datagrams as sizes) up to
    and including the first client datagram with a Handshake packet, after which
    the server has validated the client's address (RFC 9000 section 8.1); at most
    :data:`TRACE_LIMIT` entries. See :func:`interop.amplification.check_amplification`."""
    validated: bool = False
    """Whether a client datagram with a Handshake packet has reached the server."""


class _Front(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._relay._from_client(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for a datagram on loopback: like a loss


class Relay:
    """A UDP relay from ``listen_host`` (an ephemeral port) to ``target``.

    Use ``async with Relay(target, faults) as relay:`` and point the client
    at ``relay.host``:``relay.port``.
    """

    def __init__(
        self, target: tuple[str, int], faults: Faults | None = None, listen_host: str = "127.0.0.1"
    ) -> None:
        self.target = target
        self.faults = faults if faults is not None else Faults()
        self.host = listen_host
        self.port = 0
        self.stats = RelayStats()
        self._random = random.Random(self.faults.seed)
        self._front: asyncio.DatagramTransport | None = None
        self._back: socket.socket | None = None
        self._client: tuple[str, int] | None = None
        self._blackhole_until = 0.0
        self._drops_in_a_row = {True: 0, False: 0}
        self._client_count = 0
        self._next_address = 2
        self._closed = False
        self._blackhole_done = False

    async def __aenter__(self) -> Relay:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Front(self), local_addr=(self.host, 0)
        )
        self._front = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        self._bind_back("127.0.0.1")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close both sockets; datagrams still delayed are dropped."""
        self._closed = True
        if self._front is not None:
            self._front.close()
        back, self._back = self._back, None
        if back is not None:
            asyncio.get_running_loop().remove_reader(back.fileno())
            back.close()

    def _bind_back(self, address: str) -> None:
        """Open the server-facing socket on ``address`` (a new port); close the old one.

        Synchronous, so the datagram that triggers a rebind already leaves
        from the new socket, as behind a NAT that just changed its mapping.
        """
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(("::1", 0) if family == socket.AF_INET6 else (address, 0))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        old, self._back = self._back, sock
        loop.add_reader(sock.fileno(), self._read_back, sock)
        name = sock.getsockname()
        self.stats.source_addresses.add((str(name[0]), int(name[1])))
        if old is not None:
            loop.remove_reader(old.fileno())
            old.close()

    def _read_back(self, sock: socket.socket) -> None:
        for _ in range(64):  # a batch per wake-up; the loop calls again if more wait
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error on loopback: like a loss
            self._from_server(data, sock)

    def _rebind(self) -> None:
        address = "127.0.0.1"
        if self.faults.rebind_address and ":" not in self.target[0]:
            address = f"127.0.0.{self._next_address}"
            self._next_address = self._next_address % 250 + 2
        self.stats.rebinds += 1
        self._bind_back(address)

    # The fault pipeline

    def _blocked(self) -> bool:
        return asyncio.get_running_loop().time() < self._blackhole_until

    def _lose(self, from_client: bool) -> bool:
        faults = self.faults
        if (
            faults.loss
            and self._random.random() < faults.loss
            and self._drops_in_a_row[from_client] < faults.max_drops_in_a_row
        ):
            self._drops_in_a_row[from_client] += 1
            return True
        self._drops_in_a_row[from_client] = 0
        return False

    def _maybe_corrupt(self, data: bytes) -> bytes:
        if self.faults.corruption and self._random.random() < self.faults.corruption:
            buffer = bytearray(data)
            index = self._random.randrange(min(50, len(buffer)))
            buffer[index] ^= self._random.randrange(1, 256)
            self.stats.corrupted += 1
            return bytes(buffer)
        return data

    def _deliver(self, from_client: bool, data: bytes) -> None:
        def send() -> None:
            if self._closed:
                return
            if from_client:
                if self._back is not None:
                    with contextlib.suppress(OSError):  # a full buffer: like a loss
                        self._back.sendto(data, self.target)
            elif self._front is not None and self._client is not None:
                self._front.sendto(data, self._client)

        if self.faults.delay:
            asyncio.get_running_loop().call_later(self.faults.delay, send)
        else:
            send()

    def _from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        self._client = addr
        self._client_count += 1
        faults = self.faults
        if (
            self._blocked()
            or self._client_count in faults.drop_client_datagrams
            or self._lose(True)
        ):
            self.stats.dropped += 1
            return
        if (
            faults.rebind_every
            and self.stats.rebinds < faults.max_rebinds
            and self.stats.to_server
            and self.stats.to_server % faults.rebind_every == 0
        ):
            self._rebind()
        self.stats.to_server += 1
        data = self._maybe_corrupt(data)
        stats = self.stats
        if not stats.validated and len(stats.pre_validation) < TRACE_LIMIT:
            stats.pre_validation.append((True, data))
            stats.validated = "handshake" in packet_types(data)
        self._deliver(True, data)

    def _from_server(self, data: bytes, sock: socket.socket) -> None:
        if sock is not self._back:
            return  # from a socket already replaced: the "NAT" forgot that mapping
        faults = self.faults
        if (
            faults.blackhole_after is not None
            and not self._blackhole_done
            and self.stats.to_client >= faults.blackhole_after
        ):
            self._blackhole_done = True
            self._blackhole_until = asyncio.get_running_loop().time() + faults.blackhole_for
        if self._blocked() or self._lose(False):
            self.stats.dropped += 1
            return
        self.stats.to_client += 1
        stats = self.stats
        if not stats.validated and len(stats.pre_validation) < TRACE_LIMIT:
            stats.pre_validation.append((False, len(data)))
        self._deliver(False, self._maybe_corrupt(data))
