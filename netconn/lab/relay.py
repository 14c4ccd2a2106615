"""A UDP relay that delays, drops, reorders, corrupts and rebinds datagrams.

The kernel here has no netem, so per-packet delay and reordering for UDP
(and QUIC) happen in user space: clients send to the relay, the relay
forwards to ``upstream`` from one socket per client and sends the answers
back. Each direction has its own :class:`Impairment`, which may be changed
while traffic flows. Open the relay inside :meth:`netconn.lab.Lab.inside`
to place it in a namespace, or use it on loopback without root::

    async with UDPRelay(("127.0.0.1", server_port)) as relay:
        relay.to_upstream.delay = relay.to_client.delay = 0.020     # 40 ms RTT
        relay.to_upstream.loss = 0.02
        ... connect to relay.address ...
        relay.rebind()      # the server sees a new source port from now on

Faults tied to datagram counts rather than chance (drop given client
datagrams, a blackout after so many answers, a rebind every so many
datagrams) come from a :class:`Schedule` fixed when the relay is made. A
:class:`Trace` keeps the first datagrams in the order they were forwarded,
for checks such as QUIC's anti-amplification limit (``interop.amplification``).

Held datagrams are bounded (``max_queue`` per direction); beyond it the
relay drops, like a full router queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self, cast

__all__ = ["Impairment", "RelayStats", "Schedule", "Trace", "UDPRelay"]


@dataclass(slots=True)
class Impairment:
    """What happens to datagrams in one direction; change it at any time."""

    delay: float = 0.0
    """Seconds each datagram is held; default 0."""
    jitter: float = 0.0
    """Up to this many seconds added at random (uniform); default 0."""
    loss: float = 0.0
    """Probability of dropping a datagram, 0 to 1; default 0."""
    max_lost_in_a_row: int | None = None
    """Never lose more than this many datagrams in a row to ``loss``; default no limit."""
    reorder: float = 0.0
    """Probability of holding a datagram an extra ``reorder_delay``; default 0."""
    reorder_delay: float = 0.01
    """Seconds a reordered datagram waits on top of its delay; default 10 ms."""
    corrupt: float = 0.0
    """Probability of changing one byte among the first 50; default 0."""
    max_corrupted_in_a_row: int | None = None
    """Never corrupt more than this many datagrams in a row; default no limit."""
    blackhole: bool = False
    """Drop everything; default off."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """Faults at given datagram counts, fixed when the relay is made; default none."""

    drop_from_client: frozenset[int] = frozenset()
    """Numbers of the client datagrams to drop (1 = the first the relay receives)."""
    blackout_after: int | None = None
    """Datagrams forwarded to clients before both directions drop everything, once."""
    blackout_for: float = 2.0
    """Seconds the blackout lasts; default 2."""
    rebind_every: int | None = None
    """Datagrams forwarded to the upstream between rebinds (see :meth:`UDPRelay.rebind`)."""
    max_rebinds: int = 3
    """No scheduled rebind once the relay has rebound this many times; default 3."""
    rebind_addresses: tuple[str, ...] = ()
    """Local addresses the scheduled rebinds move to in turn (other loopback addresses,
    say); default none: a new port on the same address."""


@dataclass(slots=True)
class Trace:
    """The first datagrams the relay forwarded, in the order it forwarded them."""

    until: Callable[[bytes], bool] | None = None
    """Stop after the first client datagram for which this is true; default never."""
    limit: int = 256
    """Most entries kept; default 256."""
    datagrams: list[tuple[bool, bytes | int]] = field(default_factory=list)
    """``(from_client, datagram)``: a client datagram as the upstream got it (after any
    corruption), an upstream datagram as its size."""
    ended: bool = False
    """Whether a client datagram has met ``until``."""

    def record(self, from_client: bool, data: bytes) -> None:
        """Add a forwarded datagram, unless the trace has ended or is full."""
        if self.ended or len(self.datagrams) >= self.limit:
            return
        self.datagrams.append((True, data) if from_client else (False, len(data)))
        if from_client and self.until is not None:
            self.ended = self.until(data)


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
    """Relay datagrams between clients and ``upstream`` with impairments.

    ``seed`` makes the random choices repeatable; ``schedule`` and ``trace``
    are described in their classes. Use ``async with`` or :meth:`start` and
    :meth:`close`.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        max_queue: int = 1000,
        seed: int | None = None,
        schedule: Schedule | None = None,
        trace: Trace | None = None,
    ) -> None:
        self.upstream = upstream
        self._listen = listen
        self._max_queue = max_queue
        self._random = random.Random(seed)
        self.schedule = schedule if schedule is not None else Schedule()
        self.trace = trace
        self.to_upstream = Impairment()
        """Impairment of datagrams from clients to the upstream."""
        self.to_client = Impairment()
        """Impairment of datagrams from the upstream to clients."""
        self.stats_to_upstream = RelayStats()
        self.stats_to_client = RelayStats()
        self.rebinds = 0
        """Times the upstream sockets were replaced (:meth:`rebind`, or the schedule)."""
        self.source_addresses: set[tuple[str, int]] = set()
        """Every (address, port) the relay opened towards the upstream."""
        self._front: _Front | None = None
        self._backs: dict[Any, socket.socket] = {}
        self._source: str | None = None
        self._held = {"up": 0, "down": 0}
        self._lost_in_a_row = {"up": 0, "down": 0}
        self._corrupted_in_a_row = {"up": 0, "down": 0}
        self._timers: set[asyncio.TimerHandle] = set()
        self._from_clients = 0
        self._accepted_up = 0
        self._blackout_until: float | None = None

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

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def rebind(self, address: str | None = None) -> None:
        """Use new upstream sockets: the upstream sees new source ports from now on.

        ``address``: a local address to bind them to (a new source address
        too); default the one used so far. Datagrams still held for the old
        sockets are lost, like the replies the upstream sends to them.
        """
        if address is not None:
            self._source = address
        self.rebinds += 1
        self._close_backs()

    def close(self) -> None:
        """Close every socket and drop held datagrams. Never blocks."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._close_backs()
        if self._front is not None and self._front.transport is not None:
            self._front.transport.close()

    def _close_backs(self) -> None:
        backs, self._backs = self._backs, {}
        loop = asyncio.get_running_loop()
        for sock in backs.values():
            loop.remove_reader(sock.fileno())
            sock.close()

    def _from_client(self, data: bytes, client: Any) -> None:
        self._from_clients += 1
        if self._from_clients in self.schedule.drop_from_client or self._drops("up"):
            self.stats_to_upstream.dropped += 1
            return
        self._accepted_up += 1
        schedule = self.schedule
        if (
            schedule.rebind_every
            and self.rebinds < schedule.max_rebinds
            and self._accepted_up > 1
            and (self._accepted_up - 1) % schedule.rebind_every == 0
        ):
            # Before sending: the datagram that triggers it already leaves from the new socket.
            addresses = schedule.rebind_addresses
            self.rebind(addresses[self.rebinds % len(addresses)] if addresses else None)
        back = self._backs.get(client)
        if back is None:
            back = self._open_back(client)
            if back is None:
                return
        self._forward(data, "up", back, client)

    def _open_back(self, client: Any) -> socket.socket | None:
        """A socket connected to the upstream for this client (its NAT binding)."""
        family = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self._source is not None:
                sock.bind((self._source, 0))
            sock.connect(self.upstream)
        except OSError:
            sock.close()
            return None
        self._backs[client] = sock
        host, port = sock.getsockname()[:2]
        self.source_addresses.add((str(host), int(port)))
        asyncio.get_running_loop().add_reader(sock.fileno(), self._from_upstream, client, sock)
        return sock

    def _from_upstream(self, client: Any, sock: socket.socket) -> None:
        schedule = self.schedule
        while self._backs.get(client) is sock:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                continue  # an ICMP error queued on the socket: read on
            if (
                schedule.blackout_after is not None
                and self._blackout_until is None
                and self.stats_to_client.forwarded >= schedule.blackout_after
            ):
                self._blackout_until = asyncio.get_running_loop().time() + schedule.blackout_for
            if self._drops("down"):
                self.stats_to_client.dropped += 1
                continue
            self._forward(data, "down", None, client)

    def _drops(self, direction: str) -> bool:
        """Whether the impairment, a blackout or a full queue drops the next datagram."""
        rule = self.to_upstream if direction == "up" else self.to_client
        if rule.blackhole or (
            self._blackout_until is not None
            and asyncio.get_running_loop().time() < self._blackout_until
        ):
            return True
        cap = rule.max_lost_in_a_row
        if (
            rule.loss
            and self._random.random() < rule.loss
            and (cap is None or self._lost_in_a_row[direction] < cap)
        ):
            self._lost_in_a_row[direction] += 1
            return True
        self._lost_in_a_row[direction] = 0
        return self._held[direction] >= self._max_queue

    def _forward(
        self, data: bytes, direction: str, back: socket.socket | None, client: Any
    ) -> None:
        """Corrupt, delay and reorder as the direction's impairment says, then send."""
        rule = self.to_upstream if direction == "up" else self.to_client
        stats = self.stats_to_upstream if direction == "up" else self.stats_to_client
        rng = self._random
        cap = rule.max_corrupted_in_a_row
        if (
            rule.corrupt
            and data
            and rng.random() < rule.corrupt
            and (cap is None or self._corrupted_in_a_row[direction] < cap)
        ):
            position = rng.randrange(min(50, len(data)))
            changed = data[position] ^ rng.randrange(1, 256)
            data = data[:position] + bytes([changed]) + data[position + 1 :]
            stats.corrupted += 1
            self._corrupted_in_a_row[direction] += 1
        else:
            self._corrupted_in_a_row[direction] = 0
        wait = rule.delay + (rng.uniform(0, rule.jitter) if rule.jitter else 0.0)
        if rule.reorder and rng.random() < rule.reorder:
            wait += rule.reorder_delay
            stats.reordered += 1

        def send() -> None:
            stats.forwarded += 1
            if self.trace is not None:
                self.trace.record(back is not None, data)
            if back is not None:
                if back.fileno() != -1:  # closed by rebind(): the datagram is lost
                    with contextlib.suppress(OSError):
                        back.send(data)
            elif self._front is not None and self._front.transport is not None:
                self._front.transport.sendto(data, client)

        if not wait:
            send()
            return

        def send_held() -> None:
            self._held[direction] -= 1
            self._timers.discard(timer)
            send()

        self._held[direction] += 1
        timer = asyncio.get_running_loop().call_later(wait, send_held)
        self._timers.add(timer)
