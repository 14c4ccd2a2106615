"""UDP socket I/O for QUIC: batched reads with GRO, segmented writes with GSO.

asyncio's datagram transport hands over one datagram per callback and makes
one ``sendto`` per packet; QUIC then does its per-packet work (build, send,
re-arm the timer) for every datagram. Here the socket is read until it is
empty on each wake-up and the batch goes to the QUIC engine at once (in
pieces of at most about 256 KiB, so a backlog never sits in memory whole),
and consecutive packets of one size to one address leave in a single
``sendmsg`` with ``UDP_SEGMENT`` (Linux GSO). Where the kernel has
``UDP_GRO`` it also coalesces arriving datagrams, which are split here again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["DatagramSocket", "NetworkAddress"]

NetworkAddress = Any  # what the socket module returns: (host, port[, flow, scope])

_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_UDP_SEGMENT = 103  # linux/udp.h; not exported by the socket module
_UDP_GRO = 104
_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS on older kernels
_MAX_GSO_BYTES = 65000  # one IP datagram carries at most 65535 bytes with headers
_READS_PER_WAKEUP = 512  # bound the work per wake-up so timers and tasks still run
_BATCH_BYTES = 256 * 1024  # hand over what was read at this size: bounds memory per wake-up
_MAX_BACKLOG = 4096  # packets kept while the socket's send buffer is full
_RECV_SIZE = 65535
_CMSG_SPACE = socket.CMSG_SPACE(4)

BatchHandler = Callable[[list[tuple[bytes, NetworkAddress]]], None]


class DatagramSocket:
    """One non-blocking UDP socket read in batches and written with GSO.

    ``on_batch`` gets the datagrams read on one wake-up as ``(data, addr)``,
    in batches of about :data:`_BATCH_BYTES` at most.
    ``on_error`` gets socket errors (an ICMP port unreachable on a connected
    socket, for example).
    """

    def __init__(
        self,
        sock: socket.socket,
        on_batch: BatchHandler,
        on_error: Callable[[OSError], None],
        *,
        buffer_size: int = 4 << 20,
        connected: bool = False,
    ) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._on_batch = on_batch
        self._on_error = on_error
        self._connected = connected
        # Made when first needed: an idle connection's socket never needs one.
        self._backlog: deque[tuple[bytes, int, NetworkAddress]] | None = None
        self._closed = False
        self.datagrams_received = 0
        """Datagrams read (after GRO splitting)."""
        self.datagrams_sent = 0
        """Datagrams handed to the kernel (before GSO splitting)."""
        self.send_calls = 0
        """``sendmsg`` calls made: fewer than ``datagrams_sent`` when GSO works."""
        self.dropped = 0
        """Packets dropped because the socket stayed full (QUIC recovers them as loss)."""
        self.wakeups = 0
        """Times the socket was read until empty; ``datagrams_received / wakeups``
        is the mean batch handed to QUIC."""
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # keep the default; only speed suffers
                sock.setsockopt(socket.SOL_SOCKET, option, buffer_size)
        self.gso = _probe_option(sock, _UDP_SEGMENT)
        """Whether segmented sends are in use."""
        self.gro = _enable_option(sock, _UDP_GRO)
        """Whether the kernel coalesces received datagrams."""
        self._loop.add_reader(sock.fileno(), self._readable)

    @property
    def socket(self) -> socket.socket:
        """The underlying socket."""
        return self._sock

    def stats(self) -> dict[str, int | bool]:
        """Counters: datagrams and calls each way, wake-ups, GSO and GRO in use."""
        return {
            "datagrams_sent": self.datagrams_sent,
            "send_calls": self.send_calls,
            "datagrams_received": self.datagrams_received,
            "wakeups": self.wakeups,
            "dropped": self.dropped,
            "gso": self.gso,
            "gro": self.gro,
        }

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Stop reading and close the socket (packets still queued are dropped)."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._backlog:
            self._loop.remove_writer(self._sock.fileno())
            self._backlog = None
        self._sock.close()

    # Receiving

    def _readable(self) -> None:
        self.wakeups += 1
        batch: list[tuple[bytes, NetworkAddress]] = []
        batched = 0
        sock = self._sock
        for _ in range(_READS_PER_WAKEUP):
            if batched >= _BATCH_BYTES:
                self._deliver(batch)
                if self._closed:
                    return
                batch = []
                batched = 0
            try:
                data, ancdata, _flags, addr = sock.recvmsg(_RECV_SIZE, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if batch:
                    self._deliver(batch)
                    batch = []
                self._on_error(exc)
                if self._closed:
                    return
                continue
            segment = 0
            for level, kind, value in ancdata:
                if level == _SOL_UDP and kind == _UDP_GRO:
                    segment = struct.unpack("=i", value[:4])[0]
            batched += len(data)
            if segment and len(data) > segment:
                view = memoryview(data)
                for offset in range(0, len(data), segment):
                    batch.append((bytes(view[offset : offset + segment]), addr))
            else:
                batch.append((data, addr))
        if batch:
            self._deliver(batch)

    def _deliver(self, batch: list[tuple[bytes, NetworkAddress]]) -> None:
        self.datagrams_received += len(batch)
        self._on_batch(batch)

    # Sending

    @property
    def is_blocked(self) -> bool:
        """Whether packets wait for room in the socket's send buffer."""
        return bool(self._backlog)

    def send(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        """Send ``datagrams`` in order, coalescing runs of equal size to one address.

        Never blocks: when the kernel's buffer is full, the rest waits here (up
        to a bound; beyond it packets are dropped, which QUIC treats as loss).
        """
        if self._closed or not datagrams:
            return
        self.datagrams_sent += len(datagrams)
        if self._backlog:
            self._queue(datagrams)
            return
        index, count = 0, len(datagrams)
        while index < count:
            data, addr = datagrams[index]
            size = len(data)
            end = index + 1
            if self.gso:
                total = size
                while end < count and end - index < _MAX_SEGMENTS:
                    next_data, next_addr = datagrams[end]
                    next_size = len(next_data)
                    if next_addr != addr or next_size > size or total + next_size > _MAX_GSO_BYTES:
                        break
                    total += next_size
                    end += 1
                    if next_size < size:
                        break  # only the last segment may be shorter
            try:
                if end - index > 1:
                    self._send_segments([d for d, _ in datagrams[index:end]], size, addr)
                else:
                    self._send_one(data, addr)
            except (BlockingIOError, InterruptedError):
                self._queue(datagrams[index:])
                return
            except OSError as exc:
                if end - index > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                    self.gso = False  # the device refused segmentation; send one by one
                    continue
                self._on_error(exc)
                return
            index = end

    def _send_one(self, data: bytes, addr: NetworkAddress) -> None:
        self.send_calls += 1
        if self._connected:
            self._sock.send(data)
        else:
            self._sock.sendto(data, addr)

    def _send_segments(self, chunks: list[bytes], segment: int, addr: NetworkAddress) -> None:
        self.send_calls += 1
        ancillary = [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", segment))]
        if self._connected:
            self._sock.sendmsg([b"".join(chunks)], ancillary)
        else:
            self._sock.sendmsg([b"".join(chunks)], ancillary, 0, addr)

    def _queue(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        if not backlog:
            self._loop.add_writer(self._sock.fileno(), self._writable)
        for data, addr in datagrams:
            if len(backlog) >= _MAX_BACKLOG:
                self.dropped += 1
                continue
            backlog.append((data, len(data), addr))

    def _writable(self) -> None:
        backlog = self._backlog
        while backlog:  # not None: a writer is registered only with a backlog
            data, _size, addr = backlog[0]
            try:
                self._send_one(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                backlog.clear()
                self._on_error(exc)
                break
            backlog.popleft()
        self._loop.remove_writer(self._sock.fileno())


def _probe_option(sock: socket.socket, option: int) -> bool:
    # UDP_SEGMENT is set per call; reading the option tells whether the kernel knows it.
    try:
        sock.getsockopt(_SOL_UDP, option)
    except OSError:
        return False
    return True


def _enable_option(sock: socket.socket, option: int) -> bool:
    try:
        sock.setsockopt(_SOL_UDP, option, 1)
    except OSError:
        return False
    return True
