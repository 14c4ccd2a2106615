"""A UDP relay that delays, drops, reorders, corrupts and rebinds datagrams.

The kernel here has no netem, so per-packet delay and reordering for UDP
(and QUIC) happen in user space: clients send to the relay, the relay
forwards to ``upstream`` from one socket per client and sends the answers
back. Each direction has its own :class:`Impairment`, which may be changed
while traffic flows. Open the relay inside :meth:`netconn.lab.Lab.inside`
to place it in a namespace, or use it on loopback without root::

    relay = await UDPRelay(("127.0.0.1", server_port)).start()
    relay.to_upstream.delay = relay.to_client.delay = 0.020     # 40 ms RTT
    relay.to_upstream.loss = 0.02
    ... connect to relay.address ...
    relay.rebind()          # the server sees a new source port from now on
    relay.close()

Held datagrams are bounded (``max_queue`` per direction); beyond it the
relay drops, like a full router queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self, cast

__all__ = ["Impairment", "RelayStats", "UDPRelay"]


@dataclass(slots=True)
class Impairment:
    """What happens to datagrams in one direction; change it at any time."""

    delay: float = 0.0
    """Seconds each datagram is held; default 0."""
    jitter: float = 0.0
    """Up to this many seconds added at random (uniform); default 0."""
    loss: float = 0.0
    """Probability of dropping a datagram, 0 to 1; default 0."""
    reorder: float = 0.0
    """Probability of holding a datagram an extra ``reorder_delay``; default 0."""
    reorder_delay: float = 0.01
    """Seconds a reordered datagram waits on top of its delay; default 10 ms."""
    corrupt: float = 0.0
    """Probability of flipping one byte in the first 50; default 0."""
    blackhole: bool = False
    """Drop everything; default off."""


@dataclass(slots=True)
class RelayStats:
    """Datagrams seen in one direction."""

    forwarded: int = 0
    dropped: int = 0
    reordered: int = 0
    corrupted: int = 0


class _Front(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self._on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's datagram transports do not all subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors (e.g. port unreachable) are the endpoints' business


class UDPRelay:
    """Relay datagrams between clients and ``upstream`` with impairments."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        max_queue: int = 1000,
        seed: int | None = None,
    ) -> None:
        self.upstream = upstream
        self._listen = listen
        self._max_queue = max_queue
        self._random = random.Random(seed)
        self.to_upstream = Impairment()
        """Impairment of datagrams from clients to the upstream."""
        self.to_client = Impairment()
        """Impairment of datagrams from the upstream to clients."""
        self.stats_to_upstream = RelayStats()
        self.stats_to_client = RelayStats()
        self._front: _Front | None = None
        self._backs: dict[Any, socket.socket] = {}
        self._held = {"up": 0, "down": 0}
        self._timers: set[asyncio.TimerHandle] = set()

    @property
    def address(self) -> tuple[str, int]:
        """Where clients send (after :meth:`start`)."""
        assert self._front is not None and self._front.transport is not None
        host, port = self._front.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def start(self) -> Self:
        """Bind the client-facing socket (in the calling thread's namespace)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._listen[0] else socket.AF_INET
        _, self._front = await loop.create_datagram_endpoint(
            lambda: _Front(self._from_client), local_addr=self._listen, family=family
        )
        return self

    def rebind(self) -> None:
        """Use new upstream sockets: the upstream sees new source ports from now on."""
        backs, self._backs = self._backs, {}
        loop = asyncio.get_running_loop()
        for sock in backs.values():
            loop.remove_reader(sock.fileno())
            sock.close()

    def close(self) -> None:
        """Close every socket and drop held datagrams. Never blocks."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.rebind()
        if self._front is not None and self._front.transport is not None:
            self._front.transport.close()

    def _from_client(self, data: bytes, client: Any) -> None:
        back = self._backs.get(client)
        if back is None:
            back = self._open_back(client)
            if back is None:
                return
        self._impair(data, "up", back, None)

    def _open_back(self, client: Any) -> socket.socket | None:
        """A socket connected to the upstream for this client (its NAT binding)."""
        family = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self.upstream)
        except OSError:
            sock.close()
            return None
        self._backs[client] = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._from_upstream, client, sock)
        return sock

    def _from_upstream(self, client: Any, sock: socket.socket) -> None:
        while self._backs.get(client) is sock:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                continue  # an ICMP error queued on the socket: read on
            self._impair(data, "down", None, client)

    def _impair(self, data: bytes, direction: str, back: socket.socket | None, client: Any) -> None:
        rule = self.to_upstream if direction == "up" else self.to_client
        stats = self.stats_to_upstream if direction == "up" else self.stats_to_client
        rng = self._random
        if rule.blackhole or (rule.loss and rng.random() < rule.loss):
            stats.dropped += 1
            return
        if self._held[direction] >= self._max_queue:
            stats.dropped += 1
            return
        if rule.corrupt and rng.random() < rule.corrupt and data:
            position = rng.randrange(min(50, len(data)))
            data = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
            stats.corrupted += 1
        wait = rule.delay + (rng.uniform(0, rule.jitter) if rule.jitter else 0.0)
        if rule.reorder and rng.random() < rule.reorder:
            wait += rule.reorder_delay
            stats.reordered += 1

        def send() -> None:
            self._held[direction] -= 1
            self._timers.discard(timer)
            stats.forwarded += 1
            if back is not None:
                if back.fileno() != -1:  # closed by rebind(): the datagram is lost
                    with contextlib.suppress(OSError):
                        back.send(data)
            elif self._front is not None and self._front.transport is not None:
                self._front.transport.sendto(data, client)

        self._held[direction] += 1
        timer = asyncio.get_running_loop().call_later(wait, send)
        self._timers.add(timer)
